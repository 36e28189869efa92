/*
 * What the two generate pages (video and images) share: the start-up (provider picker, then the
 * form enabled, then ?from=<task id> prefilled), the submit, the list of recent tasks under the
 * form (each entry re-rendered while its task runs), the prefill of prompts and pictures from an
 * earlier task, and the data-show-if toggles. Each page keeps what differs: its form's rules,
 * its checks, its payload and how one task is drawn.
 *
 * A file of its own rather than part of common.js: only the two generate pages load it (after
 * common.js), so the tasks and account pages do not carry form code they never run.
 */
window.Studio.generatePage = (function ($, S) {
  "use strict";

  // The generate pages' own strings come with the page (templates/_generate.html).
  Object.assign(S.config.strings, S.pageData.strings || {});
  const providerLabels = {};      // provider name -> its label, once the capabilities are in
  const limits = S.pageData.limits || {};
  const studioMinSide = limits.min_side;

  /** The task's place in line and time left, its provider named by its label. */
  function queueText(task) {
    return S.queueText(task, providerLabels[task.provider]);
  }

  /**
   * The tasks shown under a form, newest first. options: {$container, $empty, kind, limit,
   * create(task) -> $element, render(task, $element, previousTask)}. Returns {add, entry, each, update}.
   */
  function recentTasks(options) {
    const entries = {};       // task id -> {$element, task, stop}

    function update(task) {
      const entry = entries[task.id];
      if (!entry) {
        return;
      }
      const previous = entry.task;
      entry.task = task;
      options.render(task, entry.$element, previous);
      S.notify.track(task);
    }

    function add(task, atTop) {
      if (entries[task.id]) {
        return;
      }
      const $element = options.create(task);
      entries[task.id] = { $element: $element, task: null, stop: null };
      options.$container.find(".results-loading").remove();
      options.$empty.addClass("d-none");
      if (atTop) {
        options.$container.prepend($element);
      } else {
        options.$container.append($element);
      }
      update(task);
      if (S.isActive(task)) {
        entries[task.id].stop = S.watchTask(task.id, update);
      }
    }

    function load() {
      const $container = options.$container;
      S.api({ url: S.url("tasks"), data: { kind: options.kind, limit: options.limit }, scope: $container.parent() })
        .then((page) => {
          $container.find(".results-loading").remove();
          page.tasks.forEach((task) => add(task, false));
          options.$empty.toggleClass("d-none", page.tasks.length > 0 || Object.keys(entries).length > 0);
        }, () => $container.find(".results-loading").remove());
    }

    return {
      add: add,
      update: update,
      load: load,
      entry: (id) => entries[id],
      each: (fn) => Object.keys(entries).forEach((id) => fn(entries[id])),
    };
  }

  /**
   * Wire up one generate page. options: {kind ("video" | "image"), $form, $submit, endpoint,
   * $prompt, $negative, refresh(), check(), payload(), prefer(settings) (the form settings the
   * next refresh keeps), preferredFrom(params), zones ({input role: dropzone}),
   * recent ({$container, $empty, limit, create, render, focus($element) -> DOM element}),
   * onReady() (after the form is enabled, before a prefill)}.
   * Returns {model(), provider(), showIf(name, visible), shown(name), modelFields(model) (the fields
   * both pages show by the table), addModelFields(body) (their values into a request), recent}.
   */
  function generatePage(options) {
    const $form = options.$form;
    const recent = recentTasks(Object.assign({ kind: options.kind }, options.recent));
    let picker = null;

    function model() {
      return picker ? picker.model() : undefined;
    }

    function showIf(name, visible) {
      $form.find('[data-show-if="' + name + '"]').toggleClass("d-none", !visible);
    }

    function shown(name) {
      return !$form.find('[data-show-if="' + name + '"]').hasClass("d-none");
    }

    /**
     * The fields every model's table decides the same way on both pages: the prompt marked when the
     * model ignores it, "Avoid" hidden when it takes or reads no negative prompt, seed and prompt
     * rewriting shown where it takes them, and the smallest picture side the browser checks.
     */
    function modelFields(m) {
      const label = S.tr(m.label || m.id);
      if (!$("#prompt-ignored").length) {
        options.$prompt.attr("aria-describedby", "prompt-ignored")
          .after($("<div>", { class: "form-text prompt-ignored d-none", id: "prompt-ignored" }));
      }
      $("#prompt-ignored").text(m.uses_prompt === false ? S.t("prompt_ignored", { model: label }) : "")
        .toggleClass("d-none", m.uses_prompt !== false);
      $form.find('.field[data-field="prompt"]').toggleClass("is-ignored", m.uses_prompt === false);
      $form.find('.field[data-field="negative_prompt"]').toggleClass("d-none", !takesNegative(m));
      showIf("seed", Boolean(m.seed));
      showIf("prompt_extend", Boolean(m.prompt_extend));
      limits.min_side = m.min_side || studioMinSide;
    }

    /** The seed and prompt rewriting, where the form shows them. */
    function addModelFields(body) {
      const seed = String($("#model-seed").val() || "").trim();
      if (shown("seed") && seed !== "") {
        body.seed = Number(seed);
      }
      if (shown("prompt_extend")) {
        body.prompt_extend = $("#prompt-extend").prop("checked");
      }
      return body;
    }

    /** Fill the form from an earlier task of this kind: its settings, prompts and pictures. */
    function prefillFromTask(id) {
      S.api({ url: S.url("task", id), scope: $form }).then((task) => {
        if (task.kind !== options.kind) {
          return;
        }
        const params = task.params || {};
        const settings = options.preferredFrom(params);
        options.prefer(Object.assign({}, settings));
        options.$prompt.val(params.prompt || "");
        options.$negative.val(params.negative_prompt || "");
        $("#model-seed").val(params.seed === undefined || params.seed === null ? "" : params.seed);
        $("#prompt-extend").prop("checked", Boolean(params.prompt_extend));
        if (!picker.select(task.provider, task.model)) {
          options.refresh();
        }
        // A picture arrives later and refreshes the form: the task's settings must win again then.
        (task.inputs || []).forEach((input) => {
          const zone = options.zones[input.role];
          if (zone) {
            zone.takeUrl(S.inputUrl(input)).then(() => {
              options.prefer(Object.assign({}, settings));
              options.refresh();
            });
          }
        });
        S.toast(S.t("filled_from_task", { id: task.id }), "secondary");
      });
    }

    // Ctrl+Enter (Cmd+Enter on a Mac) sends the form from any of its fields.
    $form.on("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !options.$submit.prop("disabled")) {
        event.preventDefault();
        $form[0].requestSubmit();
      }
    });

    S.submitTask({
      $form: $form, $submit: options.$submit, endpoint: options.endpoint, ready: model,
      check: options.check, payload: options.payload, send: S.upload.send,
      show: (task) => {
        recent.add(task, true);
        return options.recent.focus(recent.entry(task.id).$element);
      },
    });

    S.capabilities().then((caps) => {
      caps.providers.forEach((p) => {
        providerLabels[p.name] = S.tr(p.label || p.name);
      });
      picker = S.providerPicker($form, options.kind, caps, () => options.refresh());
      if (!model()) {
        S.showError({ field: "provider", message: S.t("no_models") }, $form);
        return;
      }
      options.refresh();
      options.$submit.prop("disabled", false);
      $form.attr("aria-busy", "false");
      if (options.onReady) {
        options.onReady();
      }
      const from = S.queryParam("from");
      if (from) {
        prefillFromTask(from);
      }
    }, (error) => S.showError(error, $form));

    recent.load();
    S.notify.button($("#alerts-toggle"));

    return {
      model: model,
      provider: () => picker.provider(),
      showIf: showIf,
      shown: shown,
      modelFields: modelFields,
      addModelFields: addModelFields,
      recent: recent,
    };
  }

  /** Whether a model takes a negative prompt and reads it (the form hides "Avoid" otherwise). */
  function takesNegative(m) {
    return m.negative_prompt !== false && m.uses_negative_prompt !== false;
  }

  generatePage.queueText = queueText;
  generatePage.takesNegative = takesNegative;
  return generatePage;
}(jQuery, window.Studio));
