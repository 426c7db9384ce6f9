// smolbot chat page: the few things HTMX does not do on its own — keys (Enter sends,
// Shift+Enter new line, Esc stops), clearing the input only once the server took the
// message, showing failed requests and lost streams, copy buttons, and keeping the newest
// text in view. Loaded as a file because the Content-Security-Policy forbids inline script.
(function () {
  "use strict";

  var form = document.getElementById("composer");
  var input = document.getElementById("message");
  var messages = document.getElementById("messages");
  var errorBox = document.getElementById("error");
  var sendButton = form.querySelector("button[type=submit]");

  function streaming() {
    return messages.querySelector(".msg.streaming");
  }

  function updateSend() {
    sendButton.disabled = !!streaming();
  }

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = false;
  }

  function clearError() {
    errorBox.hidden = true;
    errorBox.textContent = "";
  }

  function nearBottom() {
    return messages.scrollHeight - messages.scrollTop - messages.clientHeight < 80;
  }

  function toBottom() {
    messages.scrollTop = messages.scrollHeight;
  }

  function finish(answer) {
    if (!answer) return;
    answer.classList.remove("streaming");
    answer.setAttribute("aria-busy", "false");
    updateSend();
  }

  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (!sendButton.disabled && input.value.trim() !== "") form.requestSubmit();
    }
  });

  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") return;
    var answer = streaming();
    var stop = answer && answer.querySelector("button.stop");
    if (stop) {
      event.preventDefault();
      stop.click();
    }
  });

  form.addEventListener("submit", function (event) {
    if (input.value.trim() === "" || streaming()) event.preventDefault();
  });

  document.body.addEventListener("htmx:beforeRequest", function (event) {
    if (event.detail.elt === form) clearError();
  });

  document.body.addEventListener("htmx:afterRequest", function (event) {
    if (event.detail.elt === form && event.detail.successful) {
      input.value = "";
      updateSend();
      toBottom();
    }
  });

  document.body.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    var what = event.detail.elt === form ? "The message was not sent" : "The request failed";
    showError(what + " (" + xhr.status + "): " + (xhr.responseText || xhr.statusText));
  });

  document.body.addEventListener("htmx:sendError", function () {
    showError("The server cannot be reached. Your message is still in the box; try again.");
  });

  document.body.addEventListener("htmx:sseError", function (event) {
    var answer = event.target.closest ? event.target.closest(".msg.assistant") : null;
    if (!answer || !answer.classList.contains("streaming")) return;
    // Without sse-connect the extension does not reconnect to a stream that is gone.
    answer.removeAttribute("sse-connect");
    if (event.detail && event.detail.source) event.detail.source.close();
    var stop = answer.querySelector("button.stop");
    if (stop) stop.remove();
    showError("The connection to the server was lost; the answer stopped. What arrived is kept.");
    finish(answer);
  });

  document.body.addEventListener("htmx:sseClose", function (event) {
    finish(event.target.closest ? event.target.closest(".msg.assistant") : null);
  });

  document.body.addEventListener("htmx:sseBeforeMessage", function () {
    document.body.dataset.stick = nearBottom() ? "1" : "";
  });

  document.body.addEventListener("htmx:sseMessage", function () {
    if (document.body.dataset.stick) toBottom();
  });

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button.copy") : null;
    if (!button) return;
    var pre = button.parentElement.querySelector("pre");
    if (!pre || !navigator.clipboard) return;
    navigator.clipboard.writeText(pre.innerText).then(function () {
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = "Copy"; }, 1500);
    }, function () {
      button.textContent = "Copy failed";
    });
  });
})();
