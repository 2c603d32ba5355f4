// The API key of this tab (one of API_KEYS), shared by /dashboard and /api/docs.
// Kept in sessionStorage: it lives as long as the tab and is never sent anywhere but
// this service, as `Authorization: Bearer <key>`.
"use strict";
window.tlinkKey = (() => {
  const NAME = "tlink.apiKey";
  const get = () => {
    try { return sessionStorage.getItem(NAME) || ""; } catch { return ""; }
  };
  return {
    get,
    set(key) { sessionStorage.setItem(NAME, key.trim()); },
    clear() { sessionStorage.removeItem(NAME); },
    headers() {
      const key = get();
      return key ? { Authorization: `Bearer ${key}` } : {};
    },
    /** Keep the key typed into the page's #key-form (#api-key), then `saved()`. */
    onSubmit(saved) {
      document.getElementById("key-form").addEventListener("submit", (event) => {
        event.preventDefault();
        const input = document.getElementById("api-key");
        const key = input.value.trim();
        if (!key) return;
        this.set(key);
        input.value = "";
        saved();
      });
    },
  };
})();
