/*
 * The images page: the form follows the chosen model's table (reference picture, fidelity,
 * aspect ratios, count, seed and prompt rewriting, which fields it ignores, and the "Advanced" settings of a model whose table has an `advanced`
 * entry, liblib-custom's), mirrors the server's checks, sends POST /generate_image, and shows the
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
  const $advanced = $("#advanced-section");
  const $baseModel = $("#base-model");
  const $sampler = $("#sampler");
  const $loraRows = $("#lora-rows");
  const BASE_MODEL_NAMES = { "1.5": "SD 1.5", xl: "SDXL", "f.1": "F.1 (FLUX.1)" };

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

    page.modelFields(m);
    const negativeBlocked = hasPicture && m.negative_prompt_with_image === false;
    $negative.prop("disabled", negativeBlocked);
    $("#negative-prompt-help").remove();
    if (negativeBlocked) {
      $negative.after($("<div>", { class: "form-text", id: "negative-prompt-help" }).text(t("negative_with_image", { model: label(m) })));
    }
    S.counter($prompt, m.max_prompt);
    S.counter($negative, m.max_negative_prompt || m.max_prompt);
    refreshAdvanced(m, hasPicture);
    preferred = {};
    summary();
  }

  /** The Advanced section: shown only for a model with an `advanced` table entry, filled from it. */
  function refreshAdvanced(m, hasPicture) {
    const a = m.advanced;
    $advanced.toggleClass("d-none", !a);
    // Such a model takes its size from width and height (or the reference), not from a ratio.
    $form.find('.field[data-field="aspect_ratio"]').toggleClass("d-none", Boolean(a));
    if (!a) {
      return;
    }
    if (preferred.advanced) {
      prefillAdvanced(a, preferred.advanced);
    }
    const base = $baseModel.val();
    $baseModel.empty();
    a.base_models.forEach((b) => $baseModel.append($("<option>", { value: b }).text(BASE_MODEL_NAMES[b] || b)));
    $baseModel.val(a.base_models.indexOf(base) !== -1 ? base : a.base_models[0]);
    const sampler = $sampler.val();
    $sampler.empty();
    a.samplers.forEach((name, i) => $sampler.append($("<option>", { value: String(i) }).text(name)));
    $sampler.val(sampler !== null && sampler !== "" ? sampler : String(a.sampler_default));
    $("#checkpoint-id").attr("aria-required", a.checkpoint_required.indexOf($baseModel.val()) !== -1);
    numberField($("#steps"), a.steps);
    numberField($("#cfg-scale"), a.cfg_scale);
    const sides = hasPicture ? a.resized_side : null;
    numberField($("#width"), sides || a.width, !hasPicture);
    numberField($("#height"), sides || a.height, !hasPicture);
    $("#size-from-reference").toggleClass("d-none", !hasPicture);
    $("#seed").attr({ min: a.seed.min, max: a.seed.max });
    numberField($("#hires-steps"), a.hires_fix.steps);
    numberField($("#hires-denoising"), a.hires_fix.denoising_strength);
    $("#add-lora").prop("disabled", $loraRows.children().length >= a.loras.max);
  }

  /** An earlier task's advanced settings, put back into the inputs (prefill from a task). */
  function prefillAdvanced(a, p) {
    $baseModel.empty().append($("<option>", { value: p.base_model }).text(p.base_model)).val(p.base_model);
    $sampler.empty().append($("<option>", { value: String(p.sampler) })).val(String(p.sampler));
    $("#checkpoint-id").val(p.checkpoint_id || "");
    [["#steps", p.steps], ["#cfg-scale", p.cfg_scale], ["#width", p.width], ["#height", p.height],
      ["#seed", p.seed]].forEach(([selector, value]) => {
      $(selector).val(value === null || value === undefined ? "" : value).data("was-default", false);
    });
    $loraRows.empty();
    (p.loras || []).slice(0, a.loras.max).forEach((lora) => {
      const $row = loraRow(a);
      $row.find(".lora-id").val(lora.id);
      $row.find(".lora-weight").val(lora.weight);
    });
    $("#hires-fix").prop("checked", Boolean(p.hires_fix)).trigger("change");
    if (p.hires_fix) {
      $("#hires-steps").val(p.hires_fix.steps);
      $("#hires-denoising").val(p.hires_fix.denoising_strength);
    }
  }

  function numberField($input, limits, withDefault) {
    $input.attr({ min: limits.min, max: limits.max, placeholder: limits.default !== undefined ? limits.default : "" });
    // A default filled in here is dropped again when a reference picture makes the size its own.
    if (withDefault !== false && $input.val() === "" && limits.default !== undefined) {
      $input.val(limits.default).data("was-default", true);
    }
    if (withDefault === false && $input.data("was-default")) {
      $input.val("").data("was-default", false);
    }
  }

  $advanced.find('input[type="number"]').on("input", function () {
    $(this).data("was-default", false);
  });

  function addLora() {
    const a = model().advanced;
    if (!a || $loraRows.children().length >= a.loras.max) {
      return;
    }
    loraRow(a);
    refresh();
  }

  function loraRow(a) {
    const $row = S.fromTemplate("lora-row-template");
    $row.find(".lora-weight").attr({ min: a.loras.weight_min, max: a.loras.weight_max }).val(a.loras.weight_default);
    $row.find(".remove-lora").on("click", () => {
      $row.remove();
      refresh();
    });
    $loraRows.append($row);
    return $row;
  }

  $("#add-lora").on("click", addLora);
  $baseModel.on("change", () => refresh());
  $("#hires-fix").on("change", function () {
    $("#hires-options").toggleClass("d-none", !this.checked);
  });

  function optionalNumber($input) {
    const text = String($input.val()).trim();
    return text === "" ? undefined : Number(text);
  }

  function advancedPayload(body) {
    body.base_model = $baseModel.val();
    const checkpoint = $("#checkpoint-id").val().trim();
    if (checkpoint) {
      body.checkpoint_id = checkpoint;
    }
    body.loras = $loraRows.children().map(function () {
      const weight = optionalNumber($(this).find(".lora-weight"));
      return weight === undefined ? { id: $(this).find(".lora-id").val().trim() }
        : { id: $(this).find(".lora-id").val().trim(), weight: weight };
    }).get().filter((lora) => lora.id);
    body.sampler = Number($sampler.val());
    [["steps", "#steps"], ["cfg_scale", "#cfg-scale"], ["width", "#width"], ["height", "#height"],
      ["seed", "#seed"]].forEach(([name, selector]) => {
      const value = optionalNumber($(selector));
      if (value !== undefined) {
        body[name] = value;
      }
    });
    if ($("#hires-fix").prop("checked")) {
      body.hires_fix = {};
      const steps = optionalNumber($("#hires-steps"));
      const denoising = optionalNumber($("#hires-denoising"));
      if (steps !== undefined) {
        body.hires_fix.steps = steps;
      }
      if (denoising !== undefined) {
        body.hires_fix.denoising_strength = denoising;
      }
    }
    delete body.aspect_ratio;
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
    if (S.generatePage.takesNegative(m) && $negative.val().length > maxNegative) {
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
    // The advanced settings' ranges are on their inputs (min/max); the server's message names any
    // value out of range next to its field.
    return null;
  }

  function payload() {
    const m = model();
    const body = {
      provider: page.provider().name, model_name: m.id, prompt: $prompt.val(),
      aspect_ratio: $form.find('input[name="aspect_ratio"]:checked').val(), n: Number($n.val()),
    };
    if (S.generatePage.takesNegative(m) && !$negative.prop("disabled") && $negative.val().trim()) {
      body.negative_prompt = $negative.val();
    }
    if (m.advanced) {
      advancedPayload(body);
    } else {
      page.addModelFields(body);
    }
    if (picture.value()) {
      body.image = picture.value().file;
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
        // The frame takes the picture's own shape: a 9:16 or 21:9 result is shown whole, not cropped.
        const $frame = $card.find(".image-frame").addClass("natural");
        if (output.width && output.height) {
          $frame.css("aspect-ratio", output.width + " / " + output.height);
        }
        $frame.find("img").attr({ src: output.thumbnail_url || output.url, alt: prompt }).removeClass("d-none");
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
      const queue = S.generatePage.queueText(task);
      $card.find(".placeholder-text").text(S.isActive(task)
        ? t("status." + task.status) + (task.progress ? " · " + task.progress + " %" : "") + (queue ? " · " + queue : "")
        : "");
      const error = task.status === "failed" && task.error ? S.errorText(task.error) : S.taskNote(task);
      $card.find(".task-error").text(error).toggleClass("d-none", !error);
      $card.find(".image-frame").prop("disabled", true);
    });
    if (previous && previous.status !== task.status && task.status === "failed") {
      S.toast(t("status.failed") + " · " + S.errorText(task.error), "danger");
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
      human_fidelity: p.human_fidelity, image_reference: p.image_reference,
      advanced: p.base_model !== undefined ? p : undefined }),
    zones: { reference: picture },
    recent: { $container: $grid, $empty: $empty, limit: 8, create: newGroup, render: render,
      focus: ($group) => $group.children().first()[0] },
  });
});
