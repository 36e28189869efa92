/*
 * The tasks page: one page of /api/tasks at a time (newest first, filtered on the server, so it
 * stays fast at any size), live refresh of the unfinished tasks on screen only, a detail view,
 * and the actions: download, retry, cancel, delete (after confirmation), use the settings again.
 * Filters and the page live in the URL, so a view can be bookmarked or linked to.
 */
$(function () {
  "use strict";
  const S = Studio;
  const t = S.t;
  const data = S.pageData;
  const PAGE_SIZE = data.page_size || 20;
  const REFRESH_MS = 2000;
  const $filters = $("#task-filters");
  const $list = $("#task-list");
  const $modal = $("#task-modal");
  const $confirm = $("#confirm-modal");
  const shown = {};             // task id -> task, for the rows on screen
  let offset = 0;
  let total = 0;
  let request = 0;              // answers to older requests are dropped
  let detailId = null;
  let detailTask = null;

  // ---- filters and the URL ----------------------------------------------------------------

  const filter = S.taskFilters($filters, filtersChanged);
  const filters = filter.values;

  function writeUrl() {
    const params = new URLSearchParams(filters());
    if (offset) {
      params.set("page", String(Math.floor(offset / PAGE_SIZE) + 1));
    }
    if (detailId) {
      params.set("task", detailId);
    }
    const query = params.toString();
    history.replaceState(null, "", window.location.pathname + (query ? "?" + query : ""));
  }

  /** Filters and page from the URL; returns the task a link asks to open (?task=<id> or #<id>). */
  function readUrl() {
    const params = new URLSearchParams(window.location.search);
    filter.read(params);
    const page = parseInt(params.get("page") || "1", 10);
    offset = page > 1 ? (page - 1) * PAGE_SIZE : 0;
    return params.get("task") || decodeURIComponent(window.location.hash.slice(1)) || null;
  }

  function filtersChanged() {
    offset = 0;
    load();
  }

  $list.on("click", ".clear-filters", filter.clear);
  $list.on("click", ".reload", () => load());

  // ---- the list -----------------------------------------------------------------------------

  function state(templateId, message) {
    const $state = S.fromTemplate(templateId);
    if (message) {
      $state.find(".state-message").text(message);
    }
    $list.empty().append($state);
  }

  function load() {
    const mine = ++request;
    const query = Object.assign({ offset: offset, limit: PAGE_SIZE }, filters());
    $list.attr("aria-busy", "true").addClass("is-loading");
    writeUrl();
    return S.api({ url: S.url("tasks"), data: query, scope: $filters, quiet: true }).then((page) => {
      if (mine !== request) {
        return;
      }
      if (!page.tasks.length && page.total && offset) {
        // The page emptied (tasks were deleted): go back to the last page that has tasks.
        offset = Math.max(0, Math.floor((page.total - 1) / PAGE_SIZE) * PAGE_SIZE);
        load();
        return;
      }
      total = page.total;
      Object.keys(shown).forEach((id) => delete shown[id]);
      $list.empty();
      page.tasks.forEach((task) => $list.append(row(task)));
      if (!page.tasks.length) {
        state($.isEmptyObject(filters()) ? "state-empty" : "state-no-match");
      }
      pager();
    }, (error) => {
      if (mine !== request) {
        return;
      }
      if (error.field) {
        S.showError(error, $filters);
      }
      state("state-error", error.message);
      total = 0;
      pager();
    }).always(() => {
      if (mine === request) {
        $list.attr("aria-busy", "false").removeClass("is-loading");
      }
    });
  }

  function pager() {
    const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
    const page = Math.floor(offset / PAGE_SIZE) + 1;
    const end = Math.min(total, offset + PAGE_SIZE);
    $("#page-range").text(total ? t("range", { from: S.formatNumber(offset + 1), to: S.formatNumber(end), total: S.formatNumber(total) }) : "");
    $("#page-number").text(t("page_of", { page: S.formatNumber(page), pages: S.formatNumber(pages) }));
    $("#page-prev").prop("disabled", offset === 0);
    $("#page-next").prop("disabled", end >= total);
    $("#pager").toggleClass("d-none", total <= PAGE_SIZE && offset === 0);
  }

  $("#page-prev").on("click", () => {
    offset = Math.max(0, offset - PAGE_SIZE);
    load().then(() => window.scrollTo({ top: 0 }));
  });
  $("#page-next").on("click", () => {
    offset += PAGE_SIZE;
    load().then(() => window.scrollTo({ top: 0 }));
  });

  function thumbnailOf(task) {
    const output = (task.outputs || []).find((o) => o.thumbnail_url);
    if (output) {
      return output.thumbnail_url;
    }
    const input = (task.inputs || [])[0];
    return input ? S.inputUrl(input) : null;
  }

  const providerName = filter.providerName;

  function statusText(task) {
    const progress = (task.status === "running" || task.status === "downloading") && task.progress ? " " + task.progress + " %" : "";
    return t("status." + task.status) + progress;
  }

  function row(task) {
    const $row = S.fromTemplate("task-row-template").attr("data-task-id", task.id);
    shown[task.id] = task;
    fillRow($row, task);
    return $row;
  }

  function fillRow($row, task) {
    const prompt = task.params.prompt || "";
    $row.attr("data-status", task.status);
    $row.find(".task-title").text(prompt || t("no_prompt")).toggleClass("untitled", !prompt).attr("title", prompt)
      .attr("href", "?task=" + encodeURIComponent(task.id));
    $row.find(".task-kind").text(t("kind." + task.kind));
    $row.find(".task-fav").toggleClass("d-none", !task.favourite);
    $row.find(".task-model").text(providerName(task.provider) + " / " + task.model);
    $row.find(".task-created").attr("datetime", task.created_at).text(S.formatTime(task.created_at));
    const queue = S.queueText(task, providerName(task.provider));
    $row.find(".task-queue").text(queue ? " · " + queue : "");
    S.statusBadge($row.find(".task-status"), task.status).text(statusText(task));
    const thumb = thumbnailOf(task);
    const $img = $row.find(".task-thumb img");
    if (thumb) {
      if ($img.attr("src") !== thumb) {
        $img.attr("src", thumb);
      }
      $img.removeClass("d-none");
    }
    $row.find(".icon-video").toggleClass("d-none", Boolean(thumb) || task.kind !== "video");
    $row.find(".icon-image").toggleClass("d-none", Boolean(thumb) || task.kind !== "image");
    actionsFor($row, task);
  }

  /** Show only the actions that fit the task's state (in a row or in the detail view). */
  function actionsFor($scope, task) {
    const active = S.isActive(task);
    const outputs = task.outputs || [];
    const done = task.status === "succeeded" && outputs.length > 0;
    const $download = $scope.find('[data-action="download"]');
    $download.toggleClass("d-none", !done);
    if (done) {
      $download.attr("href", outputs.length === 1 ? S.downloadUrl(outputs[0].url) : "#")
        .attr("data-many", outputs.length > 1 ? "true" : null);
    }
    const page = task.kind === "video" ? S.url("video_page") : S.url("images_page");
    $scope.find('[data-action="reuse"]').attr("href", page + "?from=" + encodeURIComponent(task.id));
    $scope.find('[data-action="retry"]').toggleClass("d-none", active);
    $scope.find('[data-action="cancel"]').toggleClass("d-none", !active || task.status === "downloading");
    $scope.find('[data-action="delete"]').toggleClass("d-none", active);
    $scope.find(".dropdown-divider").parent().toggleClass("d-none", active);
  }

  // ---- live refresh of what is still running, on screen only ------------------------------

  function refreshActive() {
    const ids = Object.keys(shown).filter((id) => S.isActive(shown[id]));
    if (detailId && ids.indexOf(detailId) === -1 && shown[detailId] === undefined && detailTask && S.isActive(detailTask)) {
      ids.push(detailId);
    }
    const requests = ids.map((id) => S.getTask(id).then((task) => updateTask(task), (error) => {
      if (error.status === 404) {
        removeRow(id);
      }
    }));
    $.when.apply($, requests).always(() => setTimeout(refreshActive, REFRESH_MS));
  }

  function updateTask(task) {
    if (shown[task.id] !== undefined) {
      shown[task.id] = task;
      fillRow($list.find('[data-task-id="' + $.escapeSelector(task.id) + '"]'), task);
    }
    if (detailId === task.id) {
      fillDetail(task);
    }
  }

  /** A task is gone: drop its row at once, then refill the page from the server (the next task
   * moves up, the count is the server's; an emptied last page falls back to the one before). */
  function removeRow(id) {
    delete shown[id];
    $list.find('[data-task-id="' + $.escapeSelector(id) + '"]').remove();
    total = Math.max(0, total - 1);
    pager();
    return load();
  }

  // ---- the detail view ------------------------------------------------------------------------

  function openDetail(id) {
    detailId = id;
    writeUrl();
    const known = shown[id];
    if (known) {
      fillDetail(known);
    } else {
      $modal.find(".detail-media, .detail-params, .detail-inputs").empty();
    }
    bootstrap.Modal.getOrCreateInstance($modal[0]).show();
    S.getTask(id, false).then(fillDetail, (error) => S.showError(error, $modal));
  }

  $modal.on("hidden.bs.modal", () => {
    detailId = null;
    detailTask = null;
    $modal.find("video").each(function () {
      this.pause();
    });
    writeUrl();
  });

  function paramValue(key, value) {
    if (value === null || value === undefined || value === "") {
      return null;
    }
    if (key === "duration") {
      return t("seconds", { n: value });
    }
    if (typeof value === "boolean") {
      return value ? t("yes") : t("no");
    }
    if (typeof value === "object") {
      return JSON.stringify(value);
    }
    return S.tr(String(value));
  }

  function fillDetail(task) {
    const previous = detailTask;
    detailTask = task;
    const p = task.params || {};
    $modal.find(".detail-id").text(task.id);
    S.statusBadge($modal.find(".task-status"), task.status).text(statusText(task));
    $modal.find(".detail-elapsed").text(S.elapsed(task));
    const active = S.isActive(task);
    $modal.find(".task-progress").toggleClass("d-none", !active)
      .find(".progress-bar").css("width", Math.max(4, task.progress || 0) + "%");
    const error = task.status === "failed" && task.error;
    $modal.find(".detail-error").toggleClass("d-none", !error).empty();
    if (error) {
      $modal.find(".detail-error").append($("<strong>").text(S.errorText(error)))
        .append($("<span>", { class: "d-block font-monospace small mt-1 opacity-75" }).text(error.code));
    }
    $modal.find(".detail-note").toggleClass("d-none", !S.taskNote(task)).text(S.taskNote(task));

    // Outputs: an inline player for videos, the pictures for images (rebuilt only when they change).
    const outputs = task.status === "succeeded" ? task.outputs || [] : [];
    const signature = task.id + ":" + outputs.map((o) => o.url).join("|");
    const $media = $modal.find(".detail-media");
    if ($media.attr("data-signature") !== signature) {
      $media.empty().attr("data-signature", signature);
      outputs.forEach((output) => {
        const $col = $("<div>", { class: outputs.length > 1 ? "col-6 col-md-4" : "col-12" });
        if (task.kind === "video") {
          $col.append($("<video>", { controls: true, playsinline: true, preload: "metadata", src: output.url, poster: output.thumbnail_url || null }));
        } else {
          $col.append($("<a>", { href: output.url, target: "_blank", rel: "noopener" })
            .append($("<img>", { src: output.thumbnail_url || output.url, alt: p.prompt || "", loading: "lazy" })));
        }
        const facts = [t("size", { w: output.width, h: output.height }), S.formatBytes(output.bytes)];
        if (output.duration) {
          facts.push(t("seconds", { n: Number(output.duration).toFixed(1) }));
        }
        const $facts = $("<div>", { class: "d-flex justify-content-between align-items-center small text-secondary mt-1" })
          .append($("<span>").text(facts.join(" · ")));
        if (outputs.length > 1) {
          $facts.append($("<a>", { href: S.downloadUrl(output.url), class: "small" }).text(t("download")));
        }
        $col.append($facts);
        $media.append($col);
      });
    }

    $modal.find(".detail-prompt").text(p.prompt || "—");
    $modal.find(".detail-negative-wrap").toggleClass("d-none", !p.negative_prompt);
    $modal.find(".detail-negative").text(p.negative_prompt || "");
    $modal.find(".d-kind").text(t("kind." + task.kind));
    $modal.find(".d-provider").text(providerName(task.provider));
    $modal.find(".d-model").text(task.model);
    $modal.find(".d-created").text(S.formatTime(task.created_at));
    $modal.find(".d-finished").text(task.finished_at ? S.formatTime(task.finished_at) : "—");
    $modal.find(".d-cost").text(task.cost === null || task.cost === undefined ? "—" : paramValue("cost", task.cost));
    const $retryOf = $modal.find(".d-retry-of").empty().toggleClass("d-none", !task.retry_of);
    $modal.find(".d-retry-of-label").toggleClass("d-none", !task.retry_of);
    if (task.retry_of) {
      $retryOf.append($("<a>", { href: "#", "data-open-task": task.retry_of }).text(task.retry_of));
    }

    // Its webhook (webhooks.py): where it went, and each try with the receiver's answer.
    $modal.find(".d-webhook").remove();
    if (task.webhook) {
      const hook = task.webhook;
      const $hook = $("<dd>", { class: "d-webhook small" }).append($("<div>").text(S.t("webhook." + hook.state) + " · " + hook.url));
      (hook.attempts || []).forEach((a) => {
        $hook.append($("<div>", { class: "font-monospace text-secondary" }).text(S.fmt(S.t("webhook_try"), {
          n: a.attempt, time: S.formatTime(a.at), result: a.status ? "HTTP " + a.status : a.error || "—",
          ms: a.ms === null || a.ms === undefined ? "—" : a.ms,
        }) + (a.answer ? " · " + a.answer : "")));
      });
      $modal.find(".detail-about").append($("<dt>", { class: "d-webhook" }).text(S.t("webhook")), $hook);
    }

    const $params = $modal.find(".detail-params").empty();
    Object.keys(p).forEach((key) => {
      if (key === "prompt" || key === "negative_prompt") {
        return;
      }
      const value = paramValue(key, p[key]);
      if (value !== null) {
        $params.append($("<dt>").text((data.param_labels || {})[key] || key)).append($("<dd>").text(value));
      }
    });

    const inputs = task.inputs || [];
    const inputsKey = inputs.map((i) => i.path).join("|");
    const $inputs = $modal.find(".detail-inputs");
    $modal.find(".detail-inputs-wrap").toggleClass("d-none", !inputs.length);
    if ($inputs.attr("data-signature") !== inputsKey) {
      $inputs.empty().attr("data-signature", inputsKey);
      inputs.forEach((input) => {
        $inputs.append($("<figure>", { class: "mb-0" })
          .append($("<img>", { src: S.inputUrl(input), alt: (data.role_labels || {})[input.role] || input.role }))
          .append($("<figcaption>", { class: "small text-secondary mt-1" })
            .text(((data.role_labels || {})[input.role] || input.role) + (input.width ? " · " + t("size", { w: input.width, h: input.height }) : ""))));
      });
    }
    actionsFor($modal.find(".modal-footer"), task);
    $modal.find('.modal-footer [data-action="download"]').toggleClass("d-none", !(outputs.length === 1));
    if (previous && previous.id === task.id && previous.status !== task.status && !active) {
      $modal.find(".detail-elapsed").text(S.elapsed(task));
    }
  }

  $modal.on("click", "[data-open-task]", function (event) {
    event.preventDefault();
    openDetail($(this).attr("data-open-task"));
  });

  // ---- actions ----------------------------------------------------------------------------------

  function taskFor(element) {
    const id = $(element).closest("[data-task-id]").attr("data-task-id") || detailId;
    return (detailId === id && detailTask) || shown[id];
  }

  function scopeFor(element) {
    return $(element).closest(".modal").length ? $modal : $filters;
  }

  $(document).on("click", "#task-list [data-action], #task-modal [data-action]", function (event) {
    const action = $(this).attr("data-action");
    const task = taskFor(this);
    if (!task) {
      return;
    }
    if (action === "details") {
      event.preventDefault();
      openDetail(task.id);
    } else if (action === "download" && $(this).attr("data-many")) {
      event.preventDefault();
      openDetail(task.id);
    } else if (action === "cancel") {
      event.preventDefault();
      S.cancelTask(task.id, scopeFor(this)).then(updateTask);
    } else if (action === "retry") {
      event.preventDefault();
      S.api({ url: S.url("retry", task.id), method: "POST", data: {}, scope: scopeFor(this) })
        .then((answer) => {
          S.toast(t("retry_toast"), "success");
          if (detailId) {
            bootstrap.Modal.getOrCreateInstance($modal[0]).hide();
          }
          offset = 0;
          load().then(() => $list.find('[data-task-id="' + $.escapeSelector(answer.task_id) + '"]').addClass("just-added"));
        });
    } else if (action === "delete") {
      event.preventDefault();
      askDelete(task);
    }
  });

  let pendingDelete = null;

  function askDelete(task) {
    pendingDelete = task;
    S.clearErrors($confirm);
    $confirm.find(".confirm-subject").text(task.params.prompt || task.id);
    const open = () => bootstrap.Modal.getOrCreateInstance($confirm[0]).show();
    if ($modal.hasClass("show")) {
      // One dialog at a time: close the detail view first.
      $modal.one("hidden.bs.modal", open);
      bootstrap.Modal.getOrCreateInstance($modal[0]).hide();
    } else {
      open();
    }
  }

  $confirm.find(".confirm-ok").on("click", function () {
    const task = pendingDelete;
    if (!task) {
      return;
    }
    const $button = $(this).prop("disabled", true);
    S.api({ url: S.url("task", task.id), method: "DELETE", scope: $confirm })
      .then(() => {
        pendingDelete = null;
        bootstrap.Modal.getOrCreateInstance($confirm[0]).hide();
        S.toast(t("deleted_toast"));
        removeRow(task.id);
      })
      .always(() => $button.prop("disabled", false));
  });

  // ---- start --------------------------------------------------------------------------------------

  filter.providers.then(() => Object.keys(shown).forEach((id) => updateTask(shown[id])));

  /** A link to a task (?task=<id> or #<id>): open it, or say that it is gone (deleted, or not
   * the reader's: the server answers both with 404) instead of an empty dialog. */
  function openLinked(id) {
    S.getTask(id).then((task) => openDetail(task.id), (error) => {
      const gone = error.status === 404;
      S.showError({ message: gone ? S.fmt(data.task_gone, { id: id }) : error.message }, null);
      $("#page-alerts .alert").attr("id", gone ? "task-gone" : null);
      if (window.location.hash) {
        history.replaceState(null, "", window.location.pathname + window.location.search);
      }
      writeUrl();
    });
  }

  const openTask = readUrl();
  load().then(() => {
    if (openTask) {
      openLinked(openTask);
    }
  });
  setTimeout(refreshActive, REFRESH_MS);
});
