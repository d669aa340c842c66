// /docs: Swagger UI over the committed OpenAPI document (`/openapi.json`), from the vendored
// bundle (vendor/swagger-ui/, loaded by docs.html before this module). Nothing is fetched from
// another origin: the validator badge (which would call validator.swagger.io) is off.
//
// "Try it out" sends the token this tab signed in with on the dashboard (sessionStorage
// 'cairn.token', the same key as api.js): the `bearer` scheme is preauthorized with it, so the
// lock icons show it and Swagger UI's "Authorize" can replace it. Without one (another tab,
// or --no-auth), requests go without a token until the user authorizes.

const KEY = 'cairn.token';
const token = sessionStorage.getItem(KEY) || '';
const status = document.getElementById('docs-auth');

const ui = window.SwaggerUIBundle({
  url: '/openapi.json',
  dom_id: '#swagger-ui',
  deepLinking: true,
  validatorUrl: null,
  tryItOutEnabled: false,
  persistAuthorization: false,
  displayRequestDuration: true,
  filter: true,
  presets: [window.SwaggerUIBundle.presets.apis],
  layout: 'BaseLayout',
  onComplete() {
    if (token) ui.preauthorizeApiKey('bearer', token);
  },
});

status.textContent = token
  ? '"Try it out" uses the token this tab signed in with.'
  : 'Not signed in in this tab: use "Authorize" with a token (or sign in on the dashboard in this tab).';
