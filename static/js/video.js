/*
 * The video page: the form follows the chosen model's table (modes, durations, tail frame,
 * camera, freedom, sound, seed, prompt rewriting, which fields it ignores), mirrors the server's checks, sends POST /generate, and shows each task as a
 * card that updates itself until the video plays.
 */
$(function () {
  "use strict";
  const S = Studio;
  const t = S.t;
  const $form = $("#video-form");
  const $submit = $form.find(".submit-button");
  const $results = $("#video-results");
  const $empty = $("#video-empty");
  let preferred = {};        // settings to restore on the next refresh (prefill from a task)

  const first = S.dropzone($form.find('.field[data-field="image"]'), () => refresh());
  const tail = S.dropzone($form.find('.field[data-field="image_tail"]'), () => refresh());
  const $prompt = $("#prompt");
  const $negative = $("#negative-prompt");
  const $camera = $("#camera");
  const $aspect = $("#aspect-ratio");
  const $cfg = $("#cfg-scale");
  const $sound = $("#sound");
  S.sliderValue($cfg);

  // ---- what the chosen model allows ----------------------------------------------------

  function model() {
    return page.model();
  }

  function sameCombo(a, b) {
    return a.mode === b.mode && String(a.duration) === String(b.duration);
  }

  function within(combos, allowed) {
    return combos.filter((c) => allowed.some((a) => sameCombo(a, c)));
  }

  function camerasOffered(m) {
    const use = first.value() ? "image_to_video" : "text_to_video";
    return m.cameras && m.cameras.length && (!m.camera_for || m.camera_for.indexOf(use) !== -1);
  }

  function chosenCamera() {
    const shown = !$camera.closest("[data-show-if]").hasClass("d-none");
    return shown && !$camera.prop("disabled") ? ($camera.val() || null) : null;
  }

  /** The mode × duration pairs allowed with the current pictures and camera. */
  function allowedCombos(m) {
    let combos = m.combos;
    if (tail.value()) {
      combos = within(combos, m.tail_combos || []);
    }
    if (chosenCamera() && m.camera_combos) {
      combos = within(combos, m.camera_combos);
    }
    return combos.length ? combos : m.combos;
  }

  function comboText(combos) {
    return combos.map((c) => S.tr(c.mode) + " " + t("seconds", { n: c.duration })).join(", ");
  }

  function fillSelect($select, options, preferredValue) {
    const current = preferredValue !== undefined ? preferredValue : $select.val();
    $select.empty();
    options.forEach((o) => $select.append($("<option>", { value: o.value }).text(o.label)));
    if (options.some((o) => o.value === current)) {
      $select.val(current);
    }
  }

  /** Rebuild the choices from the model's table; called on every change that matters. */
  function refresh() {
    const m = model();
    if (!m) {
      return;
    }
    // Pictures
    const takesPictures = m.image_to_video;
    $form.find('.field[data-field="image"], .field[data-field="image_tail"]').toggleClass("d-none", !takesPictures);
    $("#text-only-note").toggleClass("d-none", takesPictures);
    const tailCombos = m.tail_combos || [];
    if (!tailCombos.length) {
      tail.setDisabled(true, t("tail_not_supported", { model: S.tr(m.label || m.id) }));
    } else {
      tail.setDisabled(false, tailCombos.length < m.combos.length
        ? t("tail_limits", { model: S.tr(m.label || m.id), combos: comboText(tailCombos) }) : "");
    }

    // Camera (before the combos: a camera move may narrow them)
    const cameras = camerasOffered(m) ? m.cameras : [];
    page.showIf("camera", cameras.length > 0);
    if (cameras.length) {
      const options = cameras.map((c) => ({ value: c, label: S.tr(c) }));
      if (cameras.indexOf("auto") === -1) {
        options.unshift({ value: "", label: t("none") });
      }
      fillSelect($camera, options, preferred.camera === null ? "" : preferred.camera);
      const blocked = tail.value() && m.camera_with_tail === false;
      $camera.prop("disabled", blocked);
      if (blocked) {
        $camera.val(options[0].value);
      }
      $("#camera-help").text(blocked ? t("camera_not_with_tail", { model: S.tr(m.label || m.id) })
        : cameras.indexOf("auto") !== -1 ? t("camera_hint_auto") : "");
    }

    // Mode and duration
    const combos = allowedCombos(m);
    const modes = m.modes.filter((mode) => combos.some((c) => c.mode === mode));
    $("#mode-label").text(S.tr(m.mode_label || "Mode"));
    const mode = S.segmentedOptions($form, "mode", modes.map((v) => ({ value: v, label: S.tr(v) })), preferred.mode);
    $form.find('.field[data-field="mode"]').toggleClass("d-none", m.modes.length < 2);
    const durations = m.durations.filter((d) => combos.some((c) => c.mode === mode && String(c.duration) === String(d)));
    S.segmentedOptions($form, "duration", durations.map((d) => ({ value: String(d), label: t("seconds", { n: d }) })),
      preferred.duration);

    // Text-to-video shape, freedom, negative prompt, counters
    const ratios = !first.value() && m.text_to_video ? m.aspect_ratios || [] : [];
    page.showIf("aspect_ratio", ratios.length > 0);
    fillSelect($aspect, ratios.map((r) => ({ value: r, label: r })), preferred.aspect_ratio);
    page.showIf("cfg_scale", Boolean(m.cfg_scale));
    if (preferred.cfg_scale !== undefined && preferred.cfg_scale !== null) {
      $cfg.val(preferred.cfg_scale).trigger("input");
    }
    page.modelFields(m);
    refreshSound(m, { mode: checked("mode"), duration: checked("duration") });
    S.counter($prompt, m.max_prompt);
    S.counter($negative, m.max_negative_prompt || m.max_prompt);
    preferred = {};
    summary();
  }

  function checked(name) {
    return $form.find('input[name="' + name + '"]:checked').val();
  }

  /** The sound switch: shown where the table offers sound for the chosen mode and duration. */
  function refreshSound(m, combo) {
    const offered = (m.sound_combos || []).length > 0;
    const allowed = offered && within([combo], m.sound_combos).length > 0
      && !(tail.value() && m.sound_with_tail === false);
    const switchable = allowed && m.sound_switch !== false;
    page.showIf("sound", switchable);
    if (switchable && preferred.sound !== undefined && preferred.sound !== null) {
      $sound.prop("checked", Boolean(preferred.sound));
    } else if (switchable && !$sound.data("touched")) {
      $sound.prop("checked", Boolean(m.sound_default));
    }
    const label = S.tr(m.label || m.id);
    const note = allowed && !switchable ? t("sound_auto", { model: label })
      : offered && !allowed ? t("sound_limits", { model: label, combos: comboText(m.sound_combos) }) : "";
    $("#sound-note").text(note).toggleClass("d-none", !note);
  }

  function summary() {
    const m = model();
    const duration = checked("duration");
    $("#form-summary").text(m && duration ? S.tr(m.label || m.id) + " · " + t("seconds", { n: duration }) : "");
  }
  $form.on("change", 'input[name="mode"]', () => refresh());
  $form.on("change", 'input[name="duration"]', () => refresh());
  $sound.on("change", () => $sound.data("touched", true));
  $camera.on("change", () => refresh());

  // ---- checks that mirror the server's (the server stays the judge) ----------------------

  function check() {
    const m = model();
    const label = S.tr(m.label || m.id);
    const prompt = $prompt.val();
    if (prompt.length > m.max_prompt) {
      return { field: "prompt", message: t("too_long", { max: m.max_prompt }) };
    }
    const maxNegative = m.max_negative_prompt || m.max_prompt;
    if (S.generatePage.takesNegative(m) && $negative.val().length > maxNegative) {
      return { field: "negative_prompt", message: t("too_long", { max: maxNegative }) };
    }
    if (!first.value() && !m.text_to_video) {
      return { field: "image", message: t("first_required", { model: label }) };
    }
    if (!first.value() && !prompt.trim()) {
      return { field: "prompt", message: t("prompt_required") };
    }
    const combo = { mode: checked("mode"), duration: checked("duration") };
    if (tail.value()) {
      if (!first.value()) {
        return { field: "image", message: t("tail_needs_first") };
      }
      if (!(m.tail_combos || []).length) {
        return { field: "image_tail", message: t("tail_not_supported", { model: label }) };
      }
      if (!within([combo], m.tail_combos).length) {
        return { field: "image_tail", message: t("tail_limits", { model: label, combos: comboText(m.tail_combos) }) };
      }
    }
    if (!combo.mode || !combo.duration || !within([combo], m.combos).length) {
      return { field: "duration", message: t("no_combination", { model: label }) };
    }
    return null;
  }

  function payload() {
    const m = model();
    const body = {
      provider: page.provider().name, model_name: m.id, prompt: $prompt.val(),
      mode: checked("mode"), duration: checked("duration"),
    };
    if (S.generatePage.takesNegative(m) && $negative.val().trim()) {
      body.negative_prompt = $negative.val();
    }
    if (page.shown("sound")) {
      body.sound = $sound.prop("checked");
    }
    if (first.value()) {
      body.image = first.value().file;
    }
    if (tail.value()) {
      body.image_tail = tail.value().file;
    }
    if (m.cfg_scale) {
      body.cfg_scale = Number($cfg.val());
    }
    if (chosenCamera()) {
      body.camera = chosenCamera();
    }
    if (!$aspect.closest("[data-show-if]").hasClass("d-none") && $aspect.val()) {
      body.aspect_ratio = $aspect.val();
    }
    return page.addModelFields(body);
  }

  // ---- task cards ------------------------------------------------------------------------

  function newCard(task) {
    const $card = S.fromTemplate("video-task-template").attr("data-task-id", task.id);
    $card.find(".task-details").attr("href", S.url("tasks_page") + "?task=" + encodeURIComponent(task.id));
    $card.find(".task-cancel").on("click", () => S.cancelTask(task.id, $card).then(page.recent.update));
    return $card;
  }

  function update(task, $card) {
    const active = S.isActive(task);
    S.statusBadge($card.find(".task-status"), task.status);
    $card.find(".task-model").text(task.model);
    $card.find(".task-elapsed").text(S.elapsed(task));
    $card.find(".task-prompt").text(task.params.prompt || "").toggleClass("d-none", !task.params.prompt);
    const queue = S.generatePage.queueText(task);
    $card.find(".task-queue").text(queue).toggleClass("d-none", !queue);
    const progress = Math.max(0, Math.min(100, task.progress || 0));
    $card.find(".task-progress").toggleClass("d-none", !active).attr("aria-valuenow", progress)
      .find(".progress-bar").css("width", Math.max(progress, 4) + "%")
      .toggleClass("progress-bar-striped progress-bar-animated", active);
    $card.find(".task-overlay").toggleClass("d-none", !active);
    $card.find(".task-overlay-text").text(progress ? progress + " %" : t("status." + task.status));
    const output = task.status === "succeeded" && task.outputs && task.outputs[0];
    const firstInput = (task.inputs || []).find((i) => i.role === "first");
    const $poster = $card.find(".task-poster");
    const $video = $card.find(".task-video");
    if (output) {
      $poster.addClass("d-none");
      if ($video.attr("src") !== output.url) {
        $video.attr({ poster: output.thumbnail_url || null, src: output.url }).removeClass("d-none");
      }
      $card.find(".task-download").attr("href", S.downloadUrl(output.url)).removeClass("d-none");
    } else {
      const poster = firstInput ? S.inputUrl(firstInput) : null;
      $poster.toggleClass("d-none", !poster);
      if (poster && $poster.attr("src") !== poster) {
        $poster.attr("src", poster);
      }
      $card.find(".task-media").toggleClass("no-picture", !poster);
      $card.find(".task-download").addClass("d-none");
    }
    $card.find(".task-cancel").toggleClass("d-none", !active || task.status === "downloading");
    const error = task.status === "failed" && task.error;
    $card.find(".task-error").toggleClass("d-none", !error).text(S.errorText(error));
    $card.find(".task-note").toggleClass("d-none", !S.taskNote(task)).text(S.taskNote(task));
    $card.toggleClass("is-active", active).attr("data-status", task.status);
  }

  // ---- the page: recent cards, prefill from ?image=<studio media url> or ?from=<task id> ----

  const page = S.generatePage({
    kind: "video", $form: $form, $submit: $submit, endpoint: "generate_video", $prompt: $prompt, $negative: $negative,
    refresh: refresh, check: check, payload: payload,
    prefer: (settings) => {
      preferred = settings;
    },
    preferredFrom: (p) => ({ mode: p.mode, duration: p.duration, camera: p.camera, aspect_ratio: p.aspect_ratio,
      cfg_scale: p.cfg_scale, sound: p.sound }),
    zones: { first: first, tail: tail },
    recent: { $container: $results, $empty: $empty, limit: 3, create: newCard, render: update, focus: ($card) => $card[0] },
    onReady: () => {
      const image = S.studioMediaPath(S.queryParam("image") || "");
      if (image) {
        first.takeUrl(image);
      }
    },
  });

  // The elapsed time of running tasks ticks every second without asking the server.
  setInterval(() => {
    page.recent.each((entry) => {
      if (S.isActive(entry.task)) {
        entry.$element.find(".task-elapsed").text(S.elapsed(entry.task));
      }
    });
  }, 1000);
});
