/*
 * The task filters the tasks page and the gallery share (templates/_filters.html): their values,
 * their place in the URL (so a view can be bookmarked), typing settled before a reload, the clear
 * button, the count on the narrow screens' "Filters" button, and the provider names.
 */
window.Studio.taskFilters = function ($form, onChange) {
  "use strict";
  const S = window.Studio;
  const labels = {};      // provider name -> its translated label
  const fields = () => $form.find("input[name], select[name]");

  /** The filters that are set, as query arguments of /api/tasks. */
  function values() {
    const result = {};
    fields().each(function () {
      const value = this.type === "checkbox" ? (this.checked ? this.value : "") : $.trim($(this).val());
      if (value) {
        result[this.name] = value;
      }
    });
    return result;
  }

  function shown() {
    const n = Object.keys(values()).length;
    $("#clear-filters").prop("disabled", n === 0);
    $(".filters-count").text(n ? S.formatNumber(n) : "").toggleClass("d-none", n === 0);
  }

  function changed() {
    shown();
    onChange();
  }

  /** Set the filters from URL query arguments (a select gets an option it lacks, e.g. a provider still loading). */
  function read(params) {
    fields().each(function () {
      const value = params.get(this.name);
      if (value === null) {
        return;
      }
      if (this.type === "checkbox") {
        this.checked = value === this.value;
        return;
      }
      if (this.tagName === "SELECT" && !$(this).find('option[value="' + $.escapeSelector(value) + '"]').length) {
        $(this).append($("<option>", { value: value }).text(value));
      }
      $(this).val(value);
    });
    shown();
  }

  function clear() {
    fields().each(function () {
      if (this.type === "checkbox") {
        this.checked = false;
      } else {
        $(this).val("");
      }
    });
    changed();
  }

  let typing = null;
  $form.on("input", 'input[name="q"]', () => {
    clearTimeout(typing);
    typing = setTimeout(changed, 300);
  });
  $form.on("change", 'select, input[type="checkbox"]', changed);
  $form.on("submit", (event) => {
    event.preventDefault();
    changed();
  });
  $("#clear-filters").on("click", clear);

  // The providers' names come with the capability tables; a filter from the URL keeps its choice.
  const providers = S.capabilities().then((caps) => {
    const $provider = $form.find('select[name="provider"]');
    const wanted = $provider.val();
    caps.providers.forEach((p) => {
      labels[p.name] = S.tr(p.label || p.name);
      const $option = $provider.find('option[value="' + $.escapeSelector(p.name) + '"]');
      if ($option.length) {
        $option.text(labels[p.name]);
      } else {
        $provider.append($("<option>", { value: p.name }).text(labels[p.name]));
      }
    });
    $provider.val(wanted);
    return labels;
  });

  return {
    values: values, read: read, clear: clear, providers: providers,
    isEmpty: () => $.isEmptyObject(values()),
    providerName: (name) => labels[name] || name,
  };
};
