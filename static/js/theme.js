/*
 * Colour mode (Bootstrap 5.3 `data-bs-theme`): auto (the system's setting), light or dark, kept in
 * localStorage. Loaded in <head> without defer, so the mode is set before the first paint and a
 * dark system never sees a white flash; the navigation's toggle (#theme-toggle) changes it.
 */
(function () {
  "use strict";
  const KEY = "studio-theme";
  const dark = window.matchMedia("(prefers-color-scheme: dark)");

  function stored() {
    try {
      const value = window.localStorage.getItem(KEY);
      return value === "light" || value === "dark" ? value : "auto";
    } catch (err) {           // storage refused (privacy settings): follow the system
      return "auto";
    }
  }

  function apply(choice) {
    const mode = choice === "auto" ? (dark.matches ? "dark" : "light") : choice;
    document.documentElement.setAttribute("data-bs-theme", mode);
    document.documentElement.classList.toggle("dark-mode", mode === "dark");    // Swagger UI's own dark mode (/docs)
    document.documentElement.setAttribute("data-theme-choice", choice);
    document.querySelectorAll("[data-theme-value]").forEach((button) => {
      const on = button.getAttribute("data-theme-value") === choice;
      button.classList.toggle("active", on);
      button.setAttribute("aria-pressed", on ? "true" : "false");
    });
  }

  apply(stored());
  dark.addEventListener("change", () => apply(stored()));
  document.addEventListener("DOMContentLoaded", () => {
    apply(stored());
    document.addEventListener("click", (event) => {
      const button = event.target.closest("[data-theme-value]");
      if (!button) {
        return;
      }
      const choice = button.getAttribute("data-theme-value");
      try {
        window.localStorage.setItem(KEY, choice);
      } catch (err) {
        // not kept, but still applied for this page
      }
      apply(choice);
    });
  });
}());
