// Every service's OpenAPI document, served by the gateway; "Authorize" with a
// token from POST /auth/login, then try any call through the gateway.
window.ui = SwaggerUIBundle({
  urls: $SPEC_URLS,
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  layout: "StandaloneLayout"
});
