/*
 * What every page of the studio shares: the api() wrapper (JSON in and out, CSRF header, the
 * {"error": {code, message, field}} shape shown as a Bootstrap alert next to its field), the
 * translated strings, the provider/model picker and task helpers (the picture drop zones and the
 * upload of a form with its pictures are upload.js's, on the generate pages).
 * User text is always inserted with .text(), never as HTML.
 */
window.Studio = (function ($) {
  "use strict";

  const config = JSON.parse(document.getElementById("studio-config").textContent);
  const pageDataElement = document.getElementById("page-data");
  const pageData = pageDataElement ? JSON.parse(pageDataElement.textContent) : {};
  // The task statuses come from the server (tasks.STATUSES / ACTIVE / TERMINAL), never copied here.
  const ACTIVE = config.statuses.active;
  const POLL_MS = 1000;

  // ---- strings --------------------------------------------------------------------------

  function fmt(text, values) {
    return String(text).replace(/\{(\w+)\}/g, (match, key) =>
      values && values[key] !== undefined ? String(values[key]) : match);
  }

  /** A translated UI string by key, with {placeholders} filled in. */
  function t(key, values) {
    return fmt(config.strings[key] !== undefined ? config.strings[key] : key, values);
  }

  /** The translation of a value that comes from a provider table (labels, modes, cameras). */
  function tr(text) {
    return config.catalog[text] !== undefined ? config.catalog[text] : text;
  }

  function url(name, id) {
    return config.urls[name].replace("__ID__", encodeURIComponent(id || ""));
  }

  // ---- api ------------------------------------------------------------------------------

  /**
   * An error's text as the server worded it (already in the page's language), with a provider's own
   * words (`provider_message`, often English) beside it when the message does not quote them already.
   */
  function errorText(error) {
    if (!error) {
      return "";
    }
    const own = error.provider_message;
    return own && (error.message || "").indexOf(own) === -1 ? error.message + " (" + own + ")" : error.message || "";
  }

  function errorFrom(xhr) {
    const body = xhr.responseJSON;
    if (body && body.error && body.error.message) {
      return { code: body.error.code, message: errorText(body.error), field: body.error.field, status: xhr.status };
    }
    if (!xhr.status) {
      return { code: "network_error", message: t("network_error"), status: 0 };
    }
    return { code: "http_" + xhr.status, message: t("server_error"), status: xhr.status };
  }

  /**
   * One JSON request. options: {url, method, data, scope, quiet}. Resolves with the body;
   * rejects with {code, message, field, status}, which is also shown in `scope` (a form or
   * container) next to the named field unless `quiet`.
   */
  function api(options) {
    const method = (options.method || "GET").toUpperCase();
    const headers = { Accept: "application/json" };
    const token = $('meta[name="csrf-token"]').attr("content");
    if (token) {
      headers["X-CSRFToken"] = token;
    }
    const settings = { url: options.url, method: method, headers: headers, dataType: "json", timeout: 120000 };
    if (method === "GET") {
      settings.data = options.data;
    } else if (options.data !== undefined) {
      settings.contentType = "application/json";
      settings.data = JSON.stringify(options.data);
    }
    if (options.scope) {
      clearErrors(options.scope);
    }
    return $.ajax(settings).then(
      (body) => body,
      (xhr) => {
        const error = errorFrom(xhr);
        if (!options.quiet) {
          showError(error, options.scope);
        }
        return $.Deferred().reject(error).promise();
      });
  }

  function alertElement(message, kind) {
    return $("<div>", { class: "alert alert-" + (kind || "danger") + " alert-dismissible fade show small mb-0 mt-2", role: "alert" })
      .append($("<span>").text(message))
      .append($("<button>", { type: "button", class: "btn-close", "data-bs-dismiss": "alert", "aria-label": "Close" }));
  }

  /** Show an error next to its field inside `scope` (else in scope's .form-alerts, else atop the page). */
  function showError(error, scope) {
    const $scope = scope ? $(scope) : $();
    let $field = $();
    if (error.field && $scope.length) {
      // The visible one: a field may sit in two places of which the model's table shows one
      // (the images page's seed: liblib-custom's advanced one, or the one other models take).
      $field = $scope.find('[data-field="' + $.escapeSelector(error.field) + '"]').filter(":visible").first();
    }
    let $target = $field.length ? $field.find(".field-alert").first() : $scope.find(".form-alerts").first();
    if (!$target.length) {
      $target = $("#page-alerts");
    }
    $target.empty().append(alertElement(error.message));
    if ($field.length) {
      $field.addClass("has-error");
      $field.find("input:not([type=file]), select, textarea").first().attr("aria-invalid", "true");
    }
    const box = $target[0].getBoundingClientRect();
    if (box.top < 60 || box.bottom > window.innerHeight) {
      $target[0].scrollIntoView({ block: "center", behavior: "smooth" });
    }
  }

  function clearErrors(scope) {
    const $scope = $(scope);
    $scope.find(".field-alert, .form-alerts").empty();
    $scope.find(".has-error").removeClass("has-error");
    $scope.find('[aria-invalid="true"]').removeAttr("aria-invalid");
  }

  function clearFieldError($field) {
    $field.removeClass("has-error").find(".field-alert").empty();
    $field.find('[aria-invalid="true"]').removeAttr("aria-invalid");
  }

  /** A fresh copy of a <template> element's content (server-rendered markup, no user text). */
  function fromTemplate(id) {
    return $(document.getElementById(id).content.firstElementChild.cloneNode(true));
  }

  /** A short message in the corner (the answer to an action that has no field). */
  function toast(message, kind) {
    const $toast = fromTemplate("toast-template");
    $toast.addClass("text-bg-" + (kind || "dark")).find(".toast-body").text(message);
    if (kind === "warning" || kind === "light") {
      $toast.find(".btn-close").removeClass("btn-close-white");
    } else {
      $toast.find(".btn-close").addClass("btn-close-white");
    }
    $("#toasts").append($toast);
    const instance = bootstrap.Toast.getOrCreateInstance($toast[0], { delay: 4000 });
    $toast.on("hidden.bs.toast", () => $toast.remove());
    instance.show();
  }

  /** Put a submit button into (or out of) its busy state. */
  function busy($button, isBusy) {
    $button.prop("disabled", isBusy).attr("aria-busy", isBusy ? "true" : null);
    $button.find(".spinner-border, .label-busy").toggleClass("d-none", !isBusy);
    $button.find(".label-idle").toggleClass("d-none", isBusy);
  }

  // ---- formatting -----------------------------------------------------------------------

  function locale() {
    return config.lang === "zh" ? "zh-CN" : "en-GB";
  }

  function formatTime(iso) {
    if (!iso) {
      return "";
    }
    return new Date(iso).toLocaleString(locale(), { dateStyle: "medium", timeStyle: "short" });
  }

  function formatDuration(ms) {
    const total = Math.max(0, Math.round(ms / 1000));
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = String(total % 60).padStart(2, "0");
    return h ? h + ":" + String(m).padStart(2, "0") + ":" + s : m + ":" + s;
  }

  function ordinal(n) {
    if (config.lang !== "en") {
      return String(n);
    }
    const tens = n % 100;
    const suffix = tens >= 11 && tens <= 13 ? "th" : { 1: "st", 2: "nd", 3: "rd" }[n % 10] || "th";
    return n + suffix;
  }

  /** "3rd in line for Kling · about 1:20 left" (the server's queue_position and eta_seconds), or "". */
  function queueText(task, providerLabel) {
    if (!isActive(task)) {
      return "";
    }
    const parts = [];
    if (task.queue_position) {
      parts.push(t("queue_line", { ordinal: ordinal(task.queue_position), n: task.queue_position,
        provider: providerLabel || task.provider }));
    }
    if (task.eta_seconds !== null && task.eta_seconds !== undefined) {
      parts.push(task.eta_seconds > 0 ? t("eta", { time: formatDuration(task.eta_seconds * 1000) }) : t("eta_soon"));
    }
    return parts.join(" · ");
  }

  function formatBytes(bytes) {
    if (bytes === null || bytes === undefined) {
      return "";
    }
    const units = ["B", "KB", "MB", "GB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return (unit ? value.toFixed(value < 10 ? 1 : 0) : value) + " " + units[unit];
  }

  function formatNumber(n) {
    return Number(n).toLocaleString(locale());
  }

  // ---- tasks ----------------------------------------------------------------------------

  function isActive(task) {
    return ACTIVE.indexOf(task.status) !== -1;
  }

  /** What a task has to say besides its error: its latest problem while in progress, else a cancel note. */
  function taskNote(task) {
    if (isActive(task)) {
      return (task.problem && task.problem.message) || task.download_error || "";
    }
    return task.cancel_note || "";
  }

  function statusClass(status) {
    return {
      queued: "text-bg-secondary", submitted: "text-bg-secondary", running: "text-bg-primary",
      downloading: "text-bg-primary", succeeded: "text-bg-success", failed: "text-bg-danger",
      cancelled: "text-bg-warning",
    }[status] || "text-bg-secondary";
  }

  /** Fill a .badge element with a task's status. */
  function statusBadge($badge, status) {
    return $badge.attr("class", "badge task-status " + statusClass(status)).attr("data-status", status)
      .text(t("status." + status));
  }

  /** Elapsed time of a task: to now while it runs, to its end once finished. */
  function elapsed(task) {
    const start = Date.parse(task.created_at);
    const end = task.finished_at ? Date.parse(task.finished_at) : Date.now();
    const text = formatDuration(end - start);
    return isActive(task) ? t("elapsed", { time: text }) : t("took", { time: text });
  }

  function downloadUrl(mediaUrl) {
    return mediaUrl + (mediaUrl.indexOf("?") === -1 ? "?" : "&") + "download=1";
  }

  /** The URL of a stored file from its path in the record (e.g. inputs/<id>/first.png). */
  function mediaUrl(path) {
    return config.urls.media + path.split("/").map(encodeURIComponent).join("/");
  }

  /** The path (with its query) of a URL that points at the studio's own stored files, else null. */
  function studioMediaPath(value) {
    try {
      const target = new URL(value, window.location.href);
      return target.origin === window.location.origin && target.pathname.indexOf(config.urls.media) === 0
        ? target.pathname + target.search : null;
    } catch (err) {
      return null;
    }
  }

  function inputUrl(input) {
    return mediaUrl(input.path);
  }

  function getTask(id, quiet) {
    return api({ url: url("task", id), quiet: quiet !== false });
  }

  /** Cancel a task (errors are shown in `scope`); resolves with the updated task after a toast. */
  function cancelTask(id, scope) {
    return api({ url: url("cancel", id), method: "POST", data: {}, scope: scope }).then((updated) => {
      toast(t("cancelled_toast"));
      return updated;
    });
  }

  /**
   * The generate forms' submit: check in the browser first (the server stays the judge), send,
   * then hand the new task to `show`, which returns the element to scroll into view.
   * options: {$form, $submit, endpoint, ready, check, payload, show, send (default: api, as JSON)}.
   */
  function submitTask(options) {
    const $form = options.$form;
    $form.on("submit", (event) => {
      event.preventDefault();
      if (!options.ready()) {
        return;
      }
      clearErrors($form);
      const problem = options.check();
      if (problem) {
        showError(problem, $form);
        return;
      }
      busy(options.$submit, true);
      (options.send || api)({ url: url(options.endpoint), method: "POST", data: options.payload(), scope: $form })
        .then((answer) => {
          toast(t("queued_toast"), "success");
          return getTask(answer.task_id, false).then((task) => {
            // At every width: on a desktop a long form scrolled down hides the results' top too.
            const element = options.show(task);
            element.scrollIntoView({ behavior: "smooth", block: window.innerWidth < 992 ? "center" : "nearest" });
          });
        })
        .always(() => busy(options.$submit, false));
    });
  }

  /**
   * Poll a task until it finishes, calling onUpdate(task) after every answer.
   * Returns a function that stops watching.
   */
  function watchTask(id, onUpdate) {
    let stopped = false;
    let timer = null;
    let failures = 0;
    function tick() {
      getTask(id).then((task) => {
        failures = 0;
        if (stopped) {
          return;
        }
        onUpdate(task);
        if (isActive(task)) {
          timer = setTimeout(tick, POLL_MS);
        }
      }, (error) => {
        // A deleted task stops here; a hiccup of the server is retried, slower each time.
        if (!stopped && error.status !== 404) {
          failures += 1;
          timer = setTimeout(tick, Math.min(30000, POLL_MS * 2 ** failures));
        }
      });
    }
    tick();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }

  // ---- providers and models -------------------------------------------------------------

  let capabilitiesRequest = null;

  function capabilities() {
    if (!capabilitiesRequest) {
      capabilitiesRequest = api({ url: url("capabilities"), quiet: true });
    }
    return capabilitiesRequest;
  }

  /**
   * Fill the provider and model selects of `$form` with the providers that have `kind` models.
   * Unconfigured providers are listed but disabled, with a note on how to enable them.
   * Returns {provider(), model(), select(providerName, modelId)}; onChange(model) on every change.
   */
  function providerPicker($form, kind, caps, onChange) {
    const $provider = $form.find('select[name="provider"]');
    const $model = $form.find('select[name="model_name"]');
    const $description = $form.find("#provider-description");
    const providers = caps.providers.filter((p) => p.models.some((m) => m.kind === kind));
    const byName = {};
    $provider.empty();
    providers.forEach((p) => {
      byName[p.name] = p;
      const label = tr(p.label || p.name) + (p.configured ? "" : " — " + t("not_configured"));
      $provider.append($("<option>", { value: p.name }).text(label).prop("disabled", !p.configured));
    });
    const unconfigured = providers.filter((p) => !p.configured).map((p) => tr(p.label || p.name));

    function provider() {
      return byName[$provider.val()];
    }
    function model() {
      const p = provider();
      return p ? p.models.find((m) => m.id === $model.val()) : undefined;
    }
    function fillModels(modelId) {
      const p = provider();
      $model.empty();
      if (!p) {
        return;
      }
      p.models.filter((m) => m.kind === kind).forEach((m) => {
        $model.append($("<option>", { value: m.id }).text(tr(m.label || m.id)));
      });
      if (modelId && $model.find('option[value="' + $.escapeSelector(modelId) + '"]').length) {
        $model.val(modelId);
      }
      $description.empty().append($("<span>").text(tr(p.description || "")));
      if (unconfigured.length) {
        $description.append($("<span>", { class: "d-block mt-1 unconfigured-note" })
          .text(t("unconfigured_note", { providers: unconfigured.join(", ") })));
      }
    }
    function select(providerName, modelId) {
      const p = byName[providerName];
      if (!p || !p.configured) {
        return false;
      }
      $provider.val(providerName);
      fillModels(modelId);
      onChange(model());
      return !modelId || $model.val() === modelId;
    }
    const first = providers.find((p) => p.configured);
    if (first) {
      $provider.val(first.name);
    }
    fillModels();
    $provider.on("change", () => {
      fillModels();
      onChange(model());
    });
    $model.on("change", () => onChange(model()));
    return { provider: provider, model: model, select: select };
  }

  // ---- segmented controls and counters --------------------------------------------------

  /**
   * Fill a segmented control with `options` ([{value, label}]), keeping the current choice when
   * it is still offered. Returns the chosen value.
   */
  function segmentedOptions($form, name, options, preferred) {
    const $group = $form.find('[data-options-for="' + name + '"]');
    const current = preferred !== undefined ? preferred : $group.find("input:checked").val();
    $group.empty();
    const values = options.map((o) => String(o.value));
    const chosen = values.indexOf(String(current)) !== -1 ? String(current) : values[0];
    options.forEach((o, index) => {
      const id = name + "-opt-" + index;
      $group.append($("<input>", { type: "radio", class: "btn-check", name: name, id: id, value: o.value, autocomplete: "off" })
        .prop("checked", String(o.value) === chosen));
      $group.append($("<label>", { class: "btn btn-outline-secondary", for: id }).text(o.label));
    });
    return chosen;
  }

  /** Keep "n / max" next to a textarea, in red past the limit. */
  function counter($textarea, max) {
    const $count = $('[data-count-for="' + $textarea.attr("id") + '"]');
    function update() {
      const n = $textarea.val().length;
      $count.text(formatNumber(n) + " / " + formatNumber(max)).toggleClass("text-danger", n > max)
        .toggleClass("text-secondary", n <= max);
    }
    $textarea.off("input.counter").on("input.counter", update);
    update();
  }

  /** Show an output element with the slider's value. */
  function sliderValue($range) {
    const $out = $('[data-value-of="' + $range.attr("id") + '"]');
    const update = () => $out.text(Number($range.val()).toFixed(2));
    $range.off("input.value").on("input.value", update);
    update();
  }

  // ---- page plumbing ----------------------------------------------------------------------

  function queryParam(name) {
    return new URLSearchParams(window.location.search).get(name);
  }

  $(function () {
    // A dismissed or resolved problem should not linger: editing a field clears its alert. Not a
    // file input: its own change handler has just checked the picture and may have shown the alert.
    $(document).on("input change", ".field.has-error :input:not([type=file])", function () {
      clearFieldError($(this).closest(".field"));
    });
  });

  return {
    config: config, pageData: pageData, t: t, tr: tr, fmt: fmt, url: url, api: api,
    fromTemplate: fromTemplate, showError: showError, clearErrors: clearErrors, clearFieldError: clearFieldError, toast: toast, busy: busy,
    formatTime: formatTime, formatDuration: formatDuration, formatBytes: formatBytes, formatNumber: formatNumber,
    queueText: queueText,
    isActive: isActive, taskNote: taskNote, errorText: errorText, statusBadge: statusBadge, elapsed: elapsed, downloadUrl: downloadUrl, inputUrl: inputUrl,
    mediaUrl: mediaUrl, studioMediaPath: studioMediaPath, getTask: getTask, cancelTask: cancelTask, submitTask: submitTask, watchTask: watchTask, capabilities: capabilities, providerPicker: providerPicker,
    segmentedOptions: segmentedOptions, counter: counter, sliderValue: sliderValue,
    queryParam: queryParam, ACTIVE: ACTIVE,
  };
}(jQuery));
