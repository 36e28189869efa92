/*
 * The batch pages: the list (/batches), the new-batch form (/batches/new: a dropped folder, a zip with
 * an optional prompts file, or pasted rows) and one batch (/batches/<id>: counts, progress, ETA, a grid
 * of items that updates itself while the batch runs, the actions and the downloads). Everything comes
 * from /api/v1/batches; user text is inserted with .text().
 */
$(function () {
  "use strict";
  const S = Studio;
  const data = S.pageData;
  const REFRESH_MS = 2000;
  const STATUS_CLASS = {
    running: "text-bg-primary", paused: "text-bg-warning", cancelled: "text-bg-warning", completed: "text-bg-success",
    completed_with_errors: "text-bg-danger", queued: "text-bg-secondary", processing: "text-bg-primary",
    failed: "text-bg-danger", refused: "text-bg-dark",
  };

  function bt(key, values) {
    return S.fmt(data.strings[key] !== undefined ? data.strings[key] : key, values);
  }

  function url(name, id, action) {
    return data.urls[name].replace("__ID__", encodeURIComponent(id || "")).replace("__ACTION__", action || "");
  }

  function badge($badge, key, status) {
    return $badge.attr("class", $badge.attr("class").replace(/text-bg-\S+/g, "").trim() + " " +
      (STATUS_CLASS[status] || "text-bg-secondary")).attr("data-status", status).text(bt(key + "." + status));
  }

  function progressBar($progress, percent) {
    $progress.attr("aria-valuenow", percent).find(".progress-bar").css("width", percent + "%").text(percent + " %");
  }

  /** An item's error: the studio's message, or in another language the translation of its code where known. */
  function reason(error) {
    if (!error) {
      return "";
    }
    const key = "reason." + error.code;
    return data.lang !== "en" && data.strings[key] !== undefined ? data.strings[key] : error.message;
  }

  function countsText(batch) {
    return bt("counts", Object.assign({ total: batch.total }, batch.counts));
  }

  // ---- the list -----------------------------------------------------------------------------

  function listPage($list) {
    function load() {
      S.api({ url: url("batches"), quiet: true }).then((page) => {
        $list.empty().attr("aria-busy", "false");
        if (!page.batches.length) {
          $list.append(S.fromTemplate("state-empty"));
          return;
        }
        page.batches.forEach((batch) => {
          const $row = S.fromTemplate("batch-row-template").attr("href", url("page", batch.batch_id));
          $row.find(".batch-name").text(batch.name);
          $row.find(".batch-model").text(batch.provider + " · " + batch.model);
          $row.find(".batch-counts").text(countsText(batch));
          $row.find(".batch-created").text(S.formatTime(batch.created_at));
          progressBar($row.find(".progress"), batch.progress);
          badge($row.find(".batch-status"), "status", batch.status);
          $list.append($row);
        });
        if (page.batches.some((b) => b.status === "running")) {
          setTimeout(load, REFRESH_MS);
        }
      }, (error) => {
        const $state = S.fromTemplate("state-error");
        $state.find(".state-message").text(error.message);
        $list.empty().append($state);
      });
    }
    load();
  }

  // ---- a new batch --------------------------------------------------------------------------

  function newPage($form) {
    let picker = null;
    let source = "folder";

    function fillChoices(model) {
      const video = $form.find('[name="kind"]').val() === "video";
      $form.find(".kind-video").toggleClass("d-none", !video);
      ["duration", "mode"].forEach((name) => {
        const $select = $form.find('select[name="' + name + '"]').empty();
        ((model && model[name + "s"]) || []).forEach((value) => {
          $select.append($("<option>", { value: value }).text(name === "duration" ? S.t("seconds", { n: value }) : S.tr(value)));
        });
      });
      $form.find(".submit-button").prop("disabled", !model);
    }

    function pick() {
      $form.find('select[name="provider"], select[name="model_name"]').off("change");
      picker = S.providerPicker($form, $form.find('[name="kind"]').val(), caps, fillChoices);
      fillChoices(picker.model());
    }

    let caps = null;
    S.capabilities().then((answer) => {
      caps = answer;
      pick();
    });
    $form.find('[name="kind"]').on("change", pick);
    $("#source-tabs").on("shown.bs.tab", (event) => {
      source = $(event.target).data("source");
    });
    $("#batch-folder").on("change", function () {
      $form.find(".folder-count").text(bt("files_chosen", { n: this.files.length }));
    });

    function settings() {
      const values = { name: $.trim($("#batch-name").val()), kind: $form.find('[name="kind"]').val(),
        provider: $form.find('[name="provider"]').val(), model_name: $form.find('[name="model_name"]').val() };
      if (values.kind === "video") {
        values.duration = $form.find('[name="duration"]').val();
        values.mode = $form.find('[name="mode"]').val();
      }
      Object.keys(values).forEach((key) => {
        if (!values[key]) {
          delete values[key];
        }
      });
      return values;
    }

    function rows() {
      const items = [];
      const lines = $("#batch-rows").val().split(/\r?\n/);
      for (let i = 0; i < lines.length; i++) {
        const line = lines[i].trim();
        if (!line) {
          continue;
        }
        const match = line.match(/^(\S+)\s*[\t,]\s*(.*)$/);
        if (!match) {
          return { error: bt("rows_bad", { n: i + 1 }) };
        }
        items.push({ name: "row-" + String(items.length + 1).padStart(3, "0"), image: match[1], prompt: match[2] });
      }
      return { items: items };
    }

    function formData(values) {
      const body = new FormData();
      Object.keys(values).forEach((key) => body.append(key, values[key]));
      if (source === "folder") {
        Array.from($("#batch-folder")[0].files).forEach((file) => body.append("files", file, file.webkitRelativePath || file.name));
      } else {
        const zip = $("#batch-zip")[0].files[0];
        const prompts = $("#batch-prompts")[0].files[0];
        if (zip) {
          body.append("file", zip, zip.name);
        }
        if (prompts) {
          body.append("prompts", prompts, prompts.name);
        }
      }
      return body;
    }

    function upload(values) {
      if (source === "rows") {
        const parsed = rows();
        if (parsed.error || !parsed.items.length) {
          return $.Deferred().reject({ message: parsed.error || bt("choose_files"), field: "items" }).promise();
        }
        return S.api({ url: url("create"), method: "POST", data: Object.assign(values, { items: parsed.items }), quiet: true });
      }
      const chosen = source === "folder" ? $("#batch-folder")[0].files.length : $("#batch-zip")[0].files.length;
      if (!chosen) {
        return $.Deferred().reject({ message: bt("choose_files"), field: source === "folder" ? "files" : "file" }).promise();
      }
      return $.ajax({ url: url("create"), method: "POST", data: formData(values), processData: false, contentType: false,
        dataType: "json", headers: { Accept: "application/json", "X-CSRFToken": $('meta[name="csrf-token"]').attr("content") } })
        .then((body) => body, (xhr) => {
          const body = xhr.responseJSON;
          return $.Deferred().reject(body && body.error ? body.error : { message: S.t("server_error") }).promise();
        });
    }

    $form.on("submit", (event) => {
      event.preventDefault();
      const $button = $form.find(".submit-button");
      S.clearErrors($form);
      S.busy($button, true);
      upload(settings()).then((answer) => {
        S.toast(answer.created ? bt("created", { n: answer.created }) : bt("nothing_new"), "success");
        window.location.assign(url("page", answer.batch_id));
      }, (error) => {
        S.busy($button, false);
        S.showError(error, $form);
      });
    });
  }

  // ---- one batch ----------------------------------------------------------------------------

  function detailPage() {
    const id = data.batch_id;
    const $items = $("#batch-items");
    let timer = null;

    $("[data-download]").each(function () {
      $(this).attr("href", url("action", id, $(this).data("download")));
    });

    function itemCard(item) {
      const $card = S.fromTemplate("batch-item-template").attr("data-name", item.name);
      $card.find(".item-name").text(item.name).attr("title", item.name);
      badge($card.find(".item-status"), "item", item.status);
      $card.find(".item-prompt").text(item.prompt || "").attr("title", item.prompt || "");
      $card.find(".item-error").text(reason(item.error)).attr("title", item.error ? item.error.message : null);
      if (item.thumbnail) {
        $card.find(".item-thumb").attr("src", item.thumbnail).removeClass("d-none");
      }
      return $card;
    }

    function show(batch) {
      badge($("#batch-status"), "status", batch.status);
      $("#batch-model").text(batch.provider + " · " + batch.model);
      progressBar($("#batch-progress"), batch.progress);
      $("#batch-counts").text(countsText(batch));
      const pending = batch.counts.queued + batch.counts.processing;
      $("#batch-eta").text(!pending ? bt("finished") + " " + (batch.finished_at ? S.formatTime(batch.finished_at) : "")
        : batch.eta_seconds === null ? bt("eta_unknown") : bt("eta", { time: S.formatDuration(batch.eta_seconds * 1000) }));
      $('[data-action="pause"]').prop("disabled", batch.paused || !pending);
      $('[data-action="resume"]').prop("disabled", !batch.paused);
      $('[data-action="cancel"]').prop("disabled", !pending);
      $('[data-action="retry-failed"]').prop("disabled", !(batch.counts.failed + batch.counts.cancelled));
      $items.empty().append(batch.items.map(itemCard));
    }

    function load() {
      clearTimeout(timer);
      return S.api({ url: url("batch", id), quiet: true }).then((batch) => {
        show(batch);
        if (batch.status === "running") {
          timer = setTimeout(load, REFRESH_MS);
        }
      });
    }

    const toasts = { "retry-failed": "retried", pause: "paused_toast", resume: "resumed_toast", cancel: "cancelled_toast" };
    $("[data-action]").on("click", function () {
      const action = $(this).data("action");
      const $button = $(this).prop("disabled", true);
      S.api({ url: url("action", id, action), method: "POST", scope: $("#batch-detail").next() }).then((answer) => {
        S.toast(bt(toasts[action], { n: answer.created }), "success");
        load();
      }, () => $button.prop("disabled", false));
    });
    load();
  }

  if ($("#batch-list").length) {
    listPage($("#batch-list"));
  } else if ($("#batch-form").length) {
    newPage($("#batch-form"));
  } else if (data.batch_id) {
    detailPage();
  }
});
