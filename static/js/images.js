/*
 * The images page: the form follows the chosen model's table (reference picture, fidelity,
 * aspect ratios, count), mirrors the server's checks, sends POST /generate_image, and shows the
 * results as a grid of cards, newest first, with a preview, a download and "make a video".
 */
$(function () {
  "use strict";
  const S = Studio;
  const t = S.t;
  const $form = $("#image-form");
  const $submit = $form.find(".submit-button");
  const $grid = $("#image-results");
  const $empty = $("#image-empty");
  const $prompt = $("#prompt");
  const $negative = $("#negative-prompt");
  const $n = $("#n");
  const $fidelity = $("#image-fidelity");
  const $human = $("#human-fidelity");
  const $reference = $("#image-reference");
  const groups = {};         // task id -> {$group, task, stop}
  let picker = null;
  let preferred = {};

  const picture = S.dropzone($form.find('.field[data-field="image"]'), () => refresh());
  S.sliderValue($fidelity);
  S.sliderValue($human);

  function model() {
    return picker ? picker.model() : undefined;
  }

  function label(m) {
    return S.tr(m.label || m.id);
  }

  function showIf(name, visible) {
    $form.find('[data-show-if="' + name + '"]').toggleClass("d-none", !visible);
  }

  function shown(name) {
    return !$form.find('[data-show-if="' + name + '"]').hasClass("d-none");
  }

  function ratioLabel(ratio) {
    const parts = ratio.split(":").map(Number);
    const scale = 14 / Math.max(parts[0], parts[1]);
    const $label = $("<span>");
    $label.append($("<span>", { class: "ratio-swatch", "aria-hidden": "true" })
      .css({ width: Math.round(parts[0] * scale) + "px", height: Math.round(parts[1] * scale) + "px" }));
    $label.append(document.createTextNode(ratio));
    return $label;
  }

  /** Rebuild the choices from the model's table. */
  function refresh() {
    const m = model();
    if (!m) {
      return;
    }
    const hasPicture = Boolean(picture.value());
    $form.find('.field[data-field="image"]').toggleClass("d-none", !m.image_to_image);
    $("#text-only-note").toggleClass("d-none", Boolean(m.image_to_image));
    picture.note(!m.text_to_image ? t("image_required", { model: label(m) }) : "");
    $form.find('.field[data-field="image"] .form-label .text-secondary').toggleClass("d-none", !m.text_to_image);

    showIf("image_fidelity", Boolean(m.image_fidelity) && hasPicture);
    const references = hasPicture ? m.image_reference || [] : [];
    showIf("image_reference", references.length > 0);
    const currentReference = preferred.image_reference !== undefined ? preferred.image_reference || "" : $reference.val();
    $reference.empty().append($("<option>", { value: "" }).text(t("none")));
    references.forEach((r) => $reference.append($("<option>", { value: r }).text(S.tr(r))));
    $reference.val(references.indexOf(currentReference) !== -1 ? currentReference : "");
    showIf("human_fidelity", Boolean(m.human_fidelity) && $reference.val() === "subject" && shown("image_reference"));
    if (preferred.image_fidelity !== undefined && preferred.image_fidelity !== null) {
      $fidelity.val(preferred.image_fidelity).trigger("input");
    }
    if (preferred.human_fidelity !== undefined && preferred.human_fidelity !== null) {
      $human.val(preferred.human_fidelity).trigger("input");
    }

    // The ratio buttons: swatches drawn to shape, labelled with the ratio itself.
    const chosen = S.segmentedOptions($form, "aspect_ratio", m.aspect_ratios.map((r) => ({ value: r, label: r })),
      preferred.aspect_ratio);
    $form.find('[data-options-for="aspect_ratio"] label').each(function () {
      const ratio = $(this).text();
      $(this).empty().append(ratioLabel(ratio));
    });
    $form.find('input[name="aspect_ratio"][value="' + chosen + '"]').prop("checked", true);

    $n.attr({ min: m.n_min, max: m.n_max });
    const n = preferred.n !== undefined ? preferred.n : Number($n.val());
    $n.val(Math.min(m.n_max, Math.max(m.n_min, n || m.n_min)));
    $("#n-help").text(t("n_range", { min: m.n_min, max: m.n_max }));

    const takesNegative = m.negative_prompt !== false;
    $form.find('.field[data-field="negative_prompt"]').toggleClass("d-none", !takesNegative);
    const negativeBlocked = hasPicture && m.negative_prompt_with_image === false;
    $negative.prop("disabled", negativeBlocked);
    $("#negative-prompt-help").remove();
    if (negativeBlocked) {
      $negative.after($("<div>", { class: "form-text", id: "negative-prompt-help" }).text(t("negative_with_image", { model: label(m) })));
    }
    S.counter($prompt, m.max_prompt);
    S.counter($negative, m.max_negative_prompt || m.max_prompt);
    preferred = {};
    summary();
  }

  function summary() {
    const m = model();
    const ratio = $form.find('input[name="aspect_ratio"]:checked').val();
    $("#form-summary").text(m ? [label(m), ratio, "× " + $n.val()].filter(Boolean).join(" · ") : "");
  }

  $form.on("change", 'input[name="aspect_ratio"]', summary);
  $n.on("input change", summary);
  $reference.on("change", () => refresh());
  $form.find("[data-step]").on("click", function () {
    const m = model();
    const next = Number($n.val()) + Number($(this).data("step"));
    $n.val(Math.min(m ? m.n_max : 9, Math.max(m ? m.n_min : 1, next))).trigger("change");
  });

  // ---- checks that mirror the server's ----------------------------------------------------

  function check() {
    const m = model();
    const prompt = $prompt.val();
    if (prompt.length > m.max_prompt) {
      return { field: "prompt", message: t("too_long", { max: m.max_prompt }) };
    }
    const maxNegative = m.max_negative_prompt || m.max_prompt;
    if ($negative.val().length > maxNegative) {
      return { field: "negative_prompt", message: t("too_long", { max: maxNegative }) };
    }
    if (!picture.value()) {
      if (!m.text_to_image) {
        return { field: "image", message: t("image_required", { model: label(m) }) };
      }
      if (!prompt.trim()) {
        return { field: "prompt", message: t("prompt_required") };
      }
    }
    const n = Number($n.val());
    if (!Number.isInteger(n) || n < m.n_min || n > m.n_max) {
      return { field: "n", message: t("n_range", { min: m.n_min, max: m.n_max }) };
    }
    return null;
  }

  function payload() {
    const m = model();
    const body = {
      provider: picker.provider().name, model_name: m.id, prompt: $prompt.val(),
      aspect_ratio: $form.find('input[name="aspect_ratio"]:checked').val(), n: Number($n.val()),
    };
    if (m.negative_prompt !== false && !$negative.prop("disabled") && $negative.val().trim()) {
      body.negative_prompt = $negative.val();
    }
    if (picture.value()) {
      body.image = picture.value().dataUrl;
      if (shown("image_fidelity")) {
        body.image_fidelity = Number($fidelity.val());
      }
      if (shown("image_reference") && $reference.val()) {
        body.image_reference = $reference.val();
        if (shown("human_fidelity")) {
          body.human_fidelity = Number($human.val());
        }
      }
    }
    return body;
  }

  S.submitTask({
    $form: $form, $submit: $submit, endpoint: "generate_image", ready: model, check: check, payload: payload,
    show: (task) => {
      addGroup(task, true);
      return groups[task.id].$group.children().first()[0];
    },
  });

  // ---- the results grid -------------------------------------------------------------------

  function videoPageFor(output) {
    return S.url("video_page") + "?image=" + encodeURIComponent(output.url);
  }

  function newCard() {
    return S.fromTemplate("image-card-template");
  }

  function addGroup(task, atTop) {
    if (groups[task.id]) {
      return;
    }
    const $group = $("<div>", { class: "task-group", "data-task-id": task.id });
    groups[task.id] = { $group: $group, task: task, stop: null };
    $grid.find(".results-loading").remove();
    $empty.addClass("d-none");
    if (atTop) {
      $grid.prepend($group);
    } else {
      $grid.append($group);
    }
    render(task);
    if (S.isActive(task)) {
      groups[task.id].stop = S.watchTask(task.id, render);
    }
  }

  function render(task) {
    const entry = groups[task.id];
    if (!entry) {
      return;
    }
    const previous = entry.task;
    entry.task = task;
    const $group = entry.$group;
    const prompt = task.params.prompt || "";
    const meta = [task.params.aspect_ratio, task.model].filter(Boolean).join(" · ");
    if (task.status === "succeeded") {
      if ($group.attr("data-rendered") === "outputs") {
        return;
      }
      $group.empty().attr("data-rendered", "outputs");
      task.outputs.forEach((output, index) => {
        const $card = newCard().attr("data-output", index);
        $card.find(".image-frame img").attr({ src: output.thumbnail_url || output.url, alt: prompt }).removeClass("d-none");
        $card.find(".image-placeholder").remove();
        $card.find(".image-prompt").text(prompt).toggleClass("d-none", !prompt);
        S.statusBadge($card.find(".task-status"), task.status).addClass("d-none");
        $card.find(".image-meta").text(t("size", { w: output.width, h: output.height }) + " · " + task.model);
        $card.find(".image-actions").removeClass("d-none");
        $card.find(".make-video").attr("href", videoPageFor(output));
        $card.find(".image-download").attr("href", S.downloadUrl(output.url));
        $card.find(".image-frame").on("click", () => preview(task, index));
        $group.append($card);
      });
      return;
    }
    // Waiting, failed or cancelled: placeholders (one per asked image while waiting, one otherwise).
    const count = S.isActive(task) ? task.params.n || 1 : 1;
    if ($group.children().length !== count || $group.attr("data-rendered") !== "pending") {
      $group.empty().attr("data-rendered", "pending");
      for (let i = 0; i < count; i += 1) {
        $group.append(newCard());
      }
    }
    $group.children().each(function () {
      const $card = $(this);
      $card.find(".image-prompt").text(prompt).toggleClass("d-none", !prompt);
      S.statusBadge($card.find(".task-status"), task.status);
      $card.find(".image-meta").text(meta);
      $card.find(".spinner-border").toggleClass("d-none", !S.isActive(task));
      $card.find(".placeholder-text").text(S.isActive(task)
        ? t("status." + task.status) + (task.progress ? " · " + task.progress + " %" : "") : "");
      const error = task.status === "failed" && task.error ? task.error.message : task.cancel_note || "";
      $card.find(".task-error").text(error).toggleClass("d-none", !error);
      $card.find(".image-frame").prop("disabled", true);
    });
    if (previous && previous.status !== task.status && task.status === "failed") {
      S.toast(t("status.failed") + ": " + (task.error ? task.error.message : ""), "danger");
    }
  }

  function preview(task, index) {
    const output = task.outputs[index];
    const $modal = $("#preview-modal");
    $modal.find("#preview-title").text(t("image_n", { i: index + 1, n: task.outputs.length }));
    $modal.find(".preview-image").attr({ src: output.url, alt: task.params.prompt || "" });
    $modal.find(".preview-prompt").text(task.params.prompt || "").toggleClass("d-none", !task.params.prompt);
    $modal.find(".preview-meta").text(t("size", { w: output.width, h: output.height }) + " · " + S.formatBytes(output.bytes));
    $modal.find(".preview-download").attr("href", S.downloadUrl(output.url));
    $modal.find(".preview-make-video").attr("href", videoPageFor(output));
    bootstrap.Modal.getOrCreateInstance($modal[0]).show();
  }

  function loadRecent() {
    S.api({ url: S.url("tasks"), data: { kind: "image", limit: 8 }, scope: $grid.parent() })
      .then((page) => {
        $grid.find(".results-loading").remove();
        page.tasks.forEach((task) => addGroup(task, false));
        $empty.toggleClass("d-none", page.tasks.length > 0 || Object.keys(groups).length > 0);
      }, () => $grid.find(".results-loading").remove());
  }

  // ---- prefill from an earlier task (?from=<task id>) -------------------------------------

  function prefillFromTask(id) {
    S.api({ url: S.url("task", id), scope: $form }).then((task) => {
      if (task.kind !== "image") {
        return;
      }
      const p = task.params || {};
      preferred = { aspect_ratio: p.aspect_ratio, n: p.n, image_fidelity: p.image_fidelity,
        human_fidelity: p.human_fidelity, image_reference: p.image_reference };
      const saved = Object.assign({}, preferred);
      $prompt.val(p.prompt || "");
      $negative.val(p.negative_prompt || "");
      if (!picker.select(task.provider, task.model)) {
        refresh();
      }
      const input = (task.inputs || []).find((i) => i.role === "reference");
      if (input) {
        picture.takeUrl(S.inputUrl(input)).then(() => {
          preferred = Object.assign({}, saved);
          refresh();
        });
      }
      S.toast(t("filled_from_task", { id: task.id }), "secondary");
    });
  }

  S.capabilities().then((caps) => {
    picker = S.providerPicker($form, "image", caps, () => refresh());
    if (!model()) {
      S.showError({ field: "provider", message: t("no_models") }, $form);
      return;
    }
    refresh();
    $submit.prop("disabled", false);
    $form.attr("aria-busy", "false");
    const from = S.queryParam("from");
    if (from) {
      prefillFromTask(from);
    }
  }, (error) => S.showError(error, $form));

  loadRecent();
});
