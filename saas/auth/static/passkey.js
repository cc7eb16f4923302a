// Passkey sign-in on the hosted pages (W3C WebAuthn Level 2, navigator.credentials.get).
// A button with data-passkey runs one ceremony: request options from data-options, ask the
// authenticator, send the assertion to data-verify, then follow the answer's redirect.
// Served as a file ('self' in the pages' Content-Security-Policy): no inline script.
(function () {
  "use strict";

  function toBuffer(text) {
    var b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    b64 += "===".slice((b64.length + 3) % 4);
    var raw = atob(b64);
    var bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes.buffer;
  }

  function toText(buffer) {
    var bytes = new Uint8Array(buffer);
    var raw = "";
    for (var i = 0; i < bytes.length; i++) raw += String.fromCharCode(bytes[i]);
    return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  async function post(url, csrf, body) {
    var response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    var out = await response.json();
    if (!response.ok) throw new Error(out.detail || out.title || "The passkey could not be used.");
    return out;
  }

  async function run(button) {
    var csrf = button.getAttribute("data-csrf");
    var purpose = button.getAttribute("data-purpose");
    var options = await post(button.getAttribute("data-options"), csrf, { purpose: purpose });
    var publicKey = options.publicKey;
    publicKey.challenge = toBuffer(publicKey.challenge);
    (publicKey.allowCredentials || []).forEach(function (c) { c.id = toBuffer(c.id); });
    var credential = await navigator.credentials.get({ publicKey: publicKey });
    var response = {
      clientDataJSON: toText(credential.response.clientDataJSON),
      authenticatorData: toText(credential.response.authenticatorData),
      signature: toText(credential.response.signature),
    };
    if (credential.response.userHandle) response.userHandle = toText(credential.response.userHandle);
    var out = await post(button.getAttribute("data-verify"), csrf, {
      purpose: purpose,
      credential: {
        id: credential.id,
        rawId: toText(credential.rawId),
        type: credential.type,
        response: response,
        clientExtensionResults: credential.getClientExtensionResults(),
      },
    });
    window.location.assign(out.redirect);
  }

  function showError(message) {
    var box = document.getElementById("passkey-error");
    if (box) { box.textContent = message; box.hidden = false; }
  }

  document.querySelectorAll("button[data-passkey]").forEach(function (button) {
    if (!window.PublicKeyCredential) { button.hidden = true; return; }
    button.addEventListener("click", function (event) {
      event.preventDefault();
      button.disabled = true;
      run(button).catch(function (err) {
        button.disabled = false;
        showError(err && err.message ? err.message : "The passkey could not be used.");
      });
    });
  });
})();
