// Swagger UI for the gateway: the document comes from /openapi.json, every asset from /docs/.
// validatorUrl null: the UI must not call an online validator (no internet is assumed).
window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    persistAuthorization: true,
  });
};
