// GET /api/docs: Swagger UI over openapi.json (relative: /api/openapi.json).
// With API_KEYS set, the document itself needs the key: the page asks for it once, keeps it
// in this tab's sessionStorage (shared with /dashboard) and every request Swagger UI makes,
// the document's and "Try it out"'s, carries it as `Authorization: Bearer <key>`.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  let ui = null;

  function start() {
    ui = SwaggerUIBundle({
      url: "openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      tryItOutEnabled: false,
      requestInterceptor: (request) => {
        const key = tlinkKey.get();
        if (key && !request.headers.Authorization) request.headers.Authorization = `Bearer ${key}`;
        return request;
      },
    });
    window.tlinkDocs = ui;
  }

  async function check() {
    // Ask for the document once first: a 401 means this service wants a key.
    const resp = await fetch("openapi.json", { headers: tlinkKey.headers(), cache: "no-store" });
    if (resp.status === 401) {
      $("key-form").hidden = false;
      $("key-note").textContent = tlinkKey.get() ? "that key was refused" : "this service needs an API key";
      $("api-key").focus();
      return;
    }
    $("key-form").hidden = true;
    $("forget-key").hidden = !tlinkKey.get();
    start();
  }

  tlinkKey.onSubmit(() => check());
  $("forget-key").addEventListener("click", () => {
    tlinkKey.clear();
    location.reload();
  });
  check().catch(() => start()); // the service did not answer: let Swagger UI say so
})();
