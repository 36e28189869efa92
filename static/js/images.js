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
  let preferred = {};        // settings to restore on the next refresh (prefill from a task)

  const picture = S.dropzone($form.find('.field[data-field="image"]'), () => refresh());
  S.sliderValue($fidelity);
  S.sliderValue($human);

  function model() {
    return page.model();
  }

  function label(m) {
    return S.tr(m.label || m.id);
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

    page.showIf("image_fidelity", Boolean(m.image_fidelity) && hasPicture);
    const references = hasPicture ? m.image_reference || [] : [];
    page.showIf("image_reference", references.length > 0);
    const currentReference = preferred.image_reference !== undefined ? preferred.image_reference || "" : $reference.val();
    $reference.empty().append($("<option>", { value: "" }).text(t("none")));
    references.forEach((r) => $reference.append($("<option>", { value: r }).text(S.tr(r))));
    $reference.val(references.indexOf(currentReference) !== -1 ? currentReference : "");
    page.showIf("human_fidelity", Boolean(m.human_fidelity) && $reference.val() === "subject" && page.shown("image_reference"));
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
      provider: page.provider().name, model_name: m.id, prompt: $prompt.val(),
      aspect_ratio: $form.find('input[name="aspect_ratio"]:checked').val(), n: Number($n.val()),
    };
    if (m.negative_prompt !== false && !$negative.prop("disabled") && $negative.val().trim()) {
      body.negative_prompt = $negative.val();
    }
    if (picture.value()) {
      body.image = picture.value().dataUrl;
      if (page.shown("image_fidelity")) {
        body.image_fidelity = Number($fidelity.val());
      }
      if (page.shown("image_reference") && $reference.val()) {
        body.image_reference = $reference.val();
        if (page.shown("human_fidelity")) {
          body.human_fidelity = Number($human.val());
        }
      }
    }
    return body;
  }

  // ---- the results grid -------------------------------------------------------------------

  function videoPageFor(output) {
    return S.url("video_page") + "?image=" + encodeURIComponent(output.url);
  }

  function newCard() {
    return S.fromTemplate("image-card-template");
  }

  function newGroup(task) {
    return $("<div>", { class: "task-group", "data-task-id": task.id });
  }

  function render(task, $group, previous) {
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
      const error = task.status === "failed" && task.error ? task.error.message : S.taskNote(task);
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

  // ---- the page: recent tasks, prefill from an earlier task (?from=<task id>) -----------------

  const page = S.generatePage({
    kind: "image", $form: $form, $submit: $submit, endpoint: "generate_image", $prompt: $prompt, $negative: $negative,
    refresh: refresh, check: check, payload: payload,
    prefer: (settings) => {
      preferred = settings;
    },
    preferredFrom: (p) => ({ aspect_ratio: p.aspect_ratio, n: p.n, image_fidelity: p.image_fidelity,
      human_fidelity: p.human_fidelity, image_reference: p.image_reference }),
    zones: { reference: picture },
    recent: { $container: $grid, $empty: $empty, limit: 8, create: newGroup, render: render,
      focus: ($group) => $group.children().first()[0] },
  });
});
