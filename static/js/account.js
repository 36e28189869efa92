/*
 * The account page: API keys (made, shown once, deleted), the admin's users, and the password.
 * Deleting asks for a second click on the same button instead of a dialog.
 */
$(function () {
  "use strict";

  const S = window.Studio;
  const data = S.pageData;
  const urls = data.urls;

  function made(seconds) {
    return S.formatTime(new Date(seconds * 1000).toISOString());
  }

  /** A delete button that needs a second click within a few seconds. */
  function deleteButton(onConfirm) {
    const $button = $("<button>", { type: "button", class: "btn btn-sm btn-outline-danger" }).text(S.t("delete"));
    let armed = null;
    $button.on("click", function () {
      if (!armed) {
        $button.removeClass("btn-outline-danger").addClass("btn-danger").text(S.t("confirm_delete"));
        armed = setTimeout(function () {
          armed = null;
          $button.removeClass("btn-danger").addClass("btn-outline-danger").text(S.t("delete"));
        }, 4000);
        return;
      }
      clearTimeout(armed);
      $button.prop("disabled", true);
      onConfirm();
    });
    return $button;
  }

  // ---- API keys

  function loadKeys() {
    S.api({ url: urls.keys, scope: "#keys-card" }).then(function (body) {
      const $list = $("#key-list").empty();
      body.keys.forEach(function (key) {
        $list.append($("<tr>").append(
          $("<td>").text(key.name),
          $("<td>").append($("<code>").text(key.hint)),
          $("<td>", { class: "small text-secondary" }).text(made(key.created_at)),
          $("<td>", { class: "text-end" }).append(deleteButton(function () {
            S.api({ url: urls.key.replace("__ID__", encodeURIComponent(key.id)), method: "DELETE",
                    scope: "#keys-card" }).then(function () {
              S.toast(S.t("key_deleted"));
              loadKeys();
            });
          }))));
      });
      $("#no-keys").toggleClass("d-none", body.keys.length > 0);
    });
  }

  $("#key-form").on("submit", function (event) {
    event.preventDefault();
    S.api({ url: urls.keys, method: "POST", data: { name: $("#key-name").val() }, scope: this })
      .then(function (body) {
        $("#new-key-value").text(body.key);
        $("#new-key").removeClass("d-none");
        $("#key-name").val("");
        loadKeys();
      });
  });

  // ---- users (admin)

  function limit(value) {
    return value === null || value === undefined ? S.t("no_limit") : S.formatNumber(value);
  }

  function loadUsers() {
    S.api({ url: urls.users, scope: "#users-card" }).then(function (body) {
      const $list = $("#user-list").empty();
      body.users.forEach(function (user) {
        const $actions = $("<td>", { class: "text-end" });
        if (user.role !== "admin") {
          $actions.append(deleteButton(function () {
            S.api({ url: urls.user.replace("__ID__", encodeURIComponent(user.id)), method: "DELETE",
                    scope: "#users-card" }).then(function () {
              S.toast(S.t("user_deleted"));
              loadUsers();
            });
          }));
        }
        $list.append($("<tr>").append(
          $("<td>").text(user.username),
          $("<td>").text(user.role === "admin" ? S.t("role_admin") : S.t("role_user")),
          $("<td>").text(limit(user.quota.images)),
          $("<td>").text(limit(user.quota.videos)),
          $actions));
      });
    });
  }

  function number(selector) {
    const raw = $(selector).val();
    return raw === "" ? null : Number(raw);
  }

  $("#user-form").on("submit", function (event) {
    event.preventDefault();
    const form = this;
    S.api({ url: urls.users, method: "POST", scope: form, data: {
      username: $("#new-username").val(), password: $("#new-password").val(),
      images_per_day: number("#new-images"), videos_per_day: number("#new-videos"),
    } }).then(function (user) {
      form.reset();
      S.toast(S.fmt(S.t("user_added"), { name: user.username }), "success");
      loadUsers();
    });
  });

  // ---- password

  $("#password-form").on("submit", function (event) {
    event.preventDefault();
    const form = this;
    S.api({ url: urls.password, method: "POST", scope: form, data: {
      current_password: $("#current-password").val(), new_password: $("#new-password-own").val(),
    } }).then(function () {
      form.reset();
      S.toast(S.t("password_changed"), "success");
    });
  });

  loadKeys();
  if (data.admin) {
    loadUsers();
  }
});
