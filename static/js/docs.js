// Starts Swagger UI on /docs over the studio's /openapi.json (a file, not an inline script, for the CSP).
(function () {
  'use strict';
  var root = document.getElementById('swagger-ui');
  window.ui = window.SwaggerUIBundle({
    url: root.getAttribute('data-spec-url'),
    domNode: root,
    deepLinking: true,
    // The studio's copy of the document is the one to read; no validator badge calling out.
    validatorUrl: null,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: 'BaseLayout'
  });
}());
