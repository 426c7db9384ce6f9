// smolbot chat page: the few things HTMX does not do on its own — keys (Enter sends,
// Shift+Enter new line, Esc stops), clearing the input only once the server took the
// message, showing failed requests, letting a dropped stream reconnect (and reporting one
// that is lost), copy buttons, the slash-command menu, the theme switch, the sidebar on a
// phone, and keeping the newest text in view. Then the composer (a box that grows and keeps
// the focus, Send that turns into Stop, "jump to latest"), the edit form's keys, the
// settings drawer and /clear's confirmation. Loaded as a file because the
// Content-Security-Policy forbids inline script. Commands themselves run on the server
// (POST /chat/send); this only helps typing them.
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

  // While an answer is written the Send button is its Stop button, in the same place;
  // it is disabled between a Stop and the answer's end.
  function updateSend() {
    var answer = streaming();
    sendButton.textContent = answer ? "Stop" : "Send";
    if (answer) {
      sendButton.dataset.mode = "stop";
      sendButton.setAttribute("aria-label", "Stop the answer");
    } else {
      delete sendButton.dataset.mode;
      sendButton.removeAttribute("aria-label");
    }
    sendButton.disabled = !!(answer && answer.dataset.stopping);
  }

  // Stops the answer being written, on the server (its run), as Esc and Stop do.
  function stopAnswer() {
    var answer = streaming();
    if (!answer || !answer.dataset.stop || answer.dataset.stopping) return false;
    answer.dataset.stopping = "1";
    updateSend();
    htmx.ajax("POST", answer.dataset.stop, { swap: "none" });
    return true;
  }

  // `status` says what the message is about, so it is cleared when that is over: an HTTP
  // status (409: an answer was still being written) or "unreachable".
  function showError(text, status) {
    errorBox.textContent = text;
    errorBox.dataset.status = status || "";
    errorBox.hidden = false;
  }

  function clearError() {
    errorBox.hidden = true;
    errorBox.textContent = "";
    delete errorBox.dataset.status;
  }

  // Whether the page follows the newest text: true until the user scrolls up, and again
  // once they are back at the bottom (or jump there, or send).
  var follow = true;
  var lastTop = 0;

  function atBottom() {
    return messages.scrollHeight - messages.scrollTop - messages.clientHeight < 16;
  }

  function toBottom() {
    messages.scrollTop = messages.scrollHeight;
    lastTop = messages.scrollTop;
    follow = true;
    showJump();
  }

  function finish(answer) {
    if (!answer) return;
    answer.classList.remove("streaming");
    answer.setAttribute("aria-busy", "false");
    // Its buttons show now, below the last text: still in view for a page that follows.
    if (follow) toBottom();
    updateSend();
    // "An answer is still being written" (409) is over once no answer is.
    if (!streaming() && errorBox.dataset.status === "409") clearError();
  }

  // The slash-command menu: shown while the first word typed starts with "/".
  var menu = document.getElementById("slash-menu");
  var items = Array.prototype.slice.call(menu.querySelectorAll("li"));

  function visibleItems() {
    return items.filter(function (item) { return !item.hidden; });
  }

  function select(item) {
    items.forEach(function (other) { other.setAttribute("aria-selected", other === item ? "true" : "false"); });
    if (item) input.setAttribute("aria-activedescendant", item.id);
    else input.removeAttribute("aria-activedescendant");
  }

  function hideMenu() {
    menu.hidden = true;
    select(null);
  }

  function updateMenu() {
    var value = input.value;
    if (value.charAt(0) !== "/" || /\s/.test(value)) return hideMenu();
    items.forEach(function (item) { item.hidden = item.dataset.command.indexOf(value) !== 0; });
    var shown = visibleItems();
    if (shown.length === 0) return hideMenu();
    menu.hidden = false;
    if (shown.indexOf(items.filter(function (i) { return i.getAttribute("aria-selected") === "true"; })[0]) < 0) {
      select(shown[0]);
    }
  }

  function complete(item) {
    input.value = item.dataset.insert;
    hideMenu();
    input.focus();
  }

  input.addEventListener("input", updateMenu);

  menu.addEventListener("mousedown", function (event) {
    var item = event.target.closest("li");
    if (!item) return;
    event.preventDefault();
    complete(item);
  });

  input.addEventListener("keydown", function (event) {
    if (menu.hidden) return;
    var shown = visibleItems();
    var current = shown.filter(function (i) { return i.getAttribute("aria-selected") === "true"; })[0];
    var index = shown.indexOf(current);
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      var step = event.key === "ArrowDown" ? 1 : -1;
      select(shown[(index + step + shown.length) % shown.length]);
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      hideMenu();
    } else if ((event.key === "Tab" || event.key === "Enter") && current &&
               input.value !== current.dataset.command) {
      event.preventDefault();
      event.stopImmediatePropagation();
      complete(current);
    }
  });

  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (!streaming() && input.value.trim() !== "") form.requestSubmit();
    }
  });

  document.addEventListener("keydown", function (event) {
    // An open settings drawer takes Esc for itself: it closes.
    if (event.key !== "Escape" || settingsDialog.open) return;
    if (stopAnswer()) event.preventDefault();
  });

  form.addEventListener("submit", function (event) {
    if (input.value.trim() === "" || streaming()) event.preventDefault();
  });

  document.body.addEventListener("htmx:beforeRequest", function (event) {
    if (event.detail.elt === form) clearError();
  });

  function refused(detail) {
    return !!detail.xhr && detail.xhr.status >= 400;
  }

  document.body.addEventListener("htmx:afterRequest", function (event) {
    if (event.detail.elt === form && event.detail.successful && !refused(event.detail)) {
      input.value = "";
      fitInput();
      hideMenu();
      updateSend();
      toBottom();
      input.focus();
    }
  });

  // Regenerate and edit replace the whole transcript.
  document.body.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail.target === messages) {
      updateSend();
      toBottom();
    }
  });

  // A refused request (an unknown command, a message too long, a full queue, a busy
  // conversation) comes back as a 4xx or 5xx whose plain-text body says why, in words for
  // people. That is the page's own message, shown as text, not an htmx error: htmx would
  // log each one to the console.
  document.body.addEventListener("htmx:beforeSwap", function (event) {
    var xhr = event.detail.xhr;
    if (!refused(event.detail)) return;
    event.detail.shouldSwap = false;
    event.detail.isError = false;
    var elt = event.detail.requestConfig ? event.detail.requestConfig.elt : event.detail.elt;
    var what = elt === form ? "The message was not sent" : "The request failed";
    showError(what + " (" + xhr.status + "): " + (xhr.responseText || xhr.statusText), String(xhr.status));
  });

  // While the server cannot be reached the badge says so; the first answer from it again
  // clears the message that said so (a message about something else stays).
  function badgeOffline() {
    var badge = document.getElementById("status");
    if (!badge || badge.classList.contains("offline")) return;
    var model = (badge.textContent.split(" · ")[0] || "model").trim();
    badge.className = "badge offline";
    badge.textContent = model + " · offline";
    badge.setAttribute("aria-label", "Model " + model + ", offline: the server cannot be reached");
  }

  document.body.addEventListener("htmx:sendError", function (event) {
    var poll = event.detail.elt && event.detail.elt.id === "status";
    if (poll) {
      badgeOffline();
      // A message about something else (a lost stream, a refused send) stays.
      if (!errorBox.hidden && errorBox.dataset.status !== "unreachable") return;
    }
    showError(poll
      ? "The server cannot be reached."
      : event.detail.elt === form
        ? "The server cannot be reached. Your message is still in the box; try again."
        : "The server cannot be reached.", "unreachable");
  });

  document.body.addEventListener("htmx:afterRequest", function (event) {
    if (event.detail.xhr && event.detail.xhr.status > 0 && errorBox.dataset.status === "unreachable") {
      clearError();
    }
  });

  // A dropped stream: the browser reconnects by itself (after the server's `retry`, 1 s)
  // and sends Last-Event-ID, so the server sends only what the page lacks. The page lets it
  // try a few times; when the tries run out, or the server refuses the stream (the run is
  // gone, a 404: the browser closes the source), it stops and says so.
  var RECONNECT_TRIES = 5;

  function reconnecting(answer, on) {
    var progress = answer.querySelector(".progress");
    var note = progress && progress.querySelector(".reconnecting");
    if (on && progress && !note) {
      note = document.createElement("span");
      note.className = "reconnecting";
      note.textContent = "Connection lost; reconnecting…";
      progress.replaceChildren(note);
    } else if (!on && note) {
      note.remove();
    }
  }

  document.body.addEventListener("htmx:sseError", function (event) {
    var answer = event.target.closest ? event.target.closest(".msg.assistant") : null;
    if (!answer || !answer.classList.contains("streaming")) return;
    var source = event.detail && event.detail.source;
    var tries = Number(answer.dataset.reconnects || 0) + 1;
    answer.dataset.reconnects = String(tries);
    if (source && source.readyState === EventSource.CONNECTING && tries <= RECONNECT_TRIES) {
      reconnecting(answer, true);
      return;
    }
    reconnecting(answer, false);
    // Without sse-connect the extension does not open a fresh source (one without
    // Last-Event-ID) to a stream that is gone.
    answer.removeAttribute("sse-connect");
    if (source) source.close();
    // The answer is the conversation's, not the tab's: if the server is still up it goes on
    // being written, and reopening the chat shows it.
    showError("The connection to the server was lost. What arrived is kept; reload the chat to see the rest of the answer.");
    finish(answer);
  });

  document.body.addEventListener("htmx:sseOpen", function (event) {
    var answer = event.target.closest ? event.target.closest(".msg.assistant") : null;
    if (!answer) return;
    delete answer.dataset.reconnects;
    reconnecting(answer, false);
  });

  document.body.addEventListener("htmx:sseClose", function (event) {
    finish(event.target.closest ? event.target.closest(".msg.assistant") : null);
  });

  // A user who scrolled up reads in peace: the stream stops pulling the view down, and
  // "jump to latest" takes them back (and following on). A scroll up is seen in the scroll
  // event, and again before each streamed fragment, for one the event has not reported yet.
  var jump = document.getElementById("jump");

  function showJump() {
    jump.hidden = follow || atBottom();
  }

  function noticeScroll() {
    var top = messages.scrollTop;
    if (atBottom()) follow = true;
    else if (top < lastTop - 1) follow = false;
    lastTop = top;
    showJump();
  }

  messages.addEventListener("scroll", noticeScroll, { passive: true });
  messages.addEventListener("wheel", function (event) {
    if (event.deltaY < 0 && messages.scrollTop > 0) follow = false;
  }, { passive: true });

  jump.addEventListener("click", function () {
    toBottom();
    input.focus();
  });

  document.body.addEventListener("htmx:sseBeforeMessage", noticeScroll);

  document.body.addEventListener("htmx:sseMessage", function () {
    if (follow) toBottom();
    else showJump();
  });

  function copied(button, text) {
    if (!navigator.clipboard) return;
    var label = button.textContent;
    navigator.clipboard.writeText(text).then(function () {
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = label; }, 1500);
    }, function () {
      button.textContent = "Copy failed";
    });
  }

  // Copy a whole message: the user's text as typed, an answer as its rendered text.
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button.copy-msg") : null;
    if (!button) return;
    var message = button.closest(".msg");
    var body = message && message.querySelector(".bubble, .answer");
    if (!body) return;
    // innerText is the text as shown: the code blocks' own "Copy" buttons are hidden
    // (`.copying`) while it is read, so their labels stay out of the clipboard.
    message.classList.add("copying");
    var text = body.innerText;
    message.classList.remove("copying");
    copied(button, text);
  });

  // Theme: follows the system until the button stores light or dark; a third press goes back.
  var themeButton = document.getElementById("theme-toggle");
  var THEMES = [
    { name: "", icon: "◐", label: "Theme: follows the system. Switch to light" },
    { name: "light", icon: "☀", label: "Theme: light. Switch to dark" },
    { name: "dark", icon: "☾", label: "Theme: dark. Switch to follow the system" }
  ];

  function showTheme() {
    var current = document.documentElement.dataset.theme || "";
    var theme = THEMES.filter(function (t) { return t.name === current; })[0] || THEMES[0];
    themeButton.textContent = theme.icon;
    themeButton.setAttribute("aria-label", theme.label);
    themeButton.title = theme.label;
  }

  themeButton.addEventListener("click", function () {
    var current = document.documentElement.dataset.theme || "";
    var index = THEMES.map(function (t) { return t.name; }).indexOf(current);
    var next = THEMES[(index + 1) % THEMES.length].name;
    if (next) document.documentElement.dataset.theme = next;
    else delete document.documentElement.dataset.theme;
    try {
      if (next) localStorage.setItem("smolbot-theme", next);
      else localStorage.removeItem("smolbot-theme");
    } catch (e) {
      // Storage disabled: the choice lasts for this page only.
    }
    showTheme();
  });
  showTheme();

  // The sidebar slides in over the chat on a narrow screen.
  var sidebarButton = document.getElementById("sidebar-toggle");
  var sidebar = document.getElementById("sidebar");

  function showSidebar(open) {
    document.body.classList.toggle("sidebar-open", open);
    sidebarButton.setAttribute("aria-expanded", open ? "true" : "false");
    sidebarButton.setAttribute("aria-label", open ? "Hide conversations" : "Show conversations");
  }

  sidebarButton.addEventListener("click", function (event) {
    event.stopPropagation();
    showSidebar(!document.body.classList.contains("sidebar-open"));
  });

  // A tap beside the open sidebar, or Esc, closes it.
  document.addEventListener("click", function (event) {
    if (document.body.classList.contains("sidebar-open") && !sidebar.contains(event.target)) {
      showSidebar(false);
    }
  });

  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && document.body.classList.contains("sidebar-open")) showSidebar(false);
  });

  // A conversation opens at its latest message. Again once everything (fonts) is in, which
  // can change the heights.
  toBottom();
  window.addEventListener("load", function () {
    if (follow) toBottom();
  });

  // Code and math in answers: each code block's Copy (its code, without the final newline
  // and without the language label), "Copy as Markdown" (the answer's source, which the
  // server puts on the button), and math typeset by KaTeX.
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button.copy") : null;
    var block = button && button.closest(".code");
    var pre = block && block.querySelector("pre");
    if (pre) copied(button, pre.textContent.replace(/\n$/, ""));
  });

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button.copy-md") : null;
    if (button) copied(button, button.dataset.markdown || "");
  });

  // The server marks math as <span class="math math-inline|math-display"> holding the TeX
  // source. KaTeX (vendored, about 270 KB) is loaded on the first one. `katex.render`
  // builds DOM nodes and sets their styles through CSSOM, which the CSP allows (its HTML
  // string output carries style attributes, which the CSP blocks). A rendered span gets
  // `math-done` and is not rendered again; a streamed answer's pieces are new spans.
  var katexState = "";

  function loadKatex() {
    if (katexState) return;
    katexState = "loading";
    var css = document.createElement("link");
    css.rel = "stylesheet";
    css.href = "/static/katex/katex.min.css";
    document.head.appendChild(css);
    var script = document.createElement("script");
    script.src = "/static/katex/katex.min.js";
    script.onload = function () {
      katexState = "ready";
      renderMath();
    };
    script.onerror = function () { katexState = "failed"; };
    document.head.appendChild(script);
  }

  function renderMath() {
    var pending = messages.querySelectorAll(".math:not(.math-done)");
    if (pending.length === 0) return;
    if (katexState !== "ready" || !window.katex) return loadKatex();
    Array.prototype.forEach.call(pending, function (span) {
      var tex = span.textContent;
      span.classList.add("math-done");
      try {
        window.katex.render(tex, span, {
          displayMode: span.classList.contains("math-display"),
          throwOnError: true
        });
      } catch (e) {
        // KaTeX's own error rendering sets a style attribute; the source shows instead.
        span.textContent = tex;
        span.classList.add("math-error");
        span.title = e && e.message ? e.message : "This formula could not be typeset.";
      }
    });
    // Typeset formulas change the heights: a page that follows stays at the bottom.
    if (follow) toBottom();
  }

  document.body.addEventListener("htmx:afterSwap", renderMath);
  document.body.addEventListener("htmx:sseMessage", renderMath);
  renderMath();
  // ---- Composer: the box grows with its text up to its CSS max-height, then scrolls; it
  // has the focus on load (not on a touch screen, where that would pop up the keyboard)
  // and after each send; Send is Stop while an answer is written (see updateSend). ----
  function fitInput() {
    input.style.height = "auto";
    input.style.height = input.scrollHeight + input.offsetHeight - input.clientHeight + "px";
    input.style.overflowY = input.scrollHeight > input.clientHeight + 1 ? "auto" : "hidden";
  }

  input.addEventListener("input", fitInput);
  fitInput();

  sendButton.addEventListener("click", function (event) {
    if (!streaming()) return;
    event.preventDefault();
    stopAnswer();
  });

  if (!window.matchMedia("(pointer: coarse)").matches) input.focus();

  // ---- Editing the last question: the box has the focus with the cursor at the end;
  // Enter saves and sends, Shift+Enter is a new line, Esc (or Cancel) puts the message back
  // as it was. The message is kept as a copy when Edit is pressed, since htmx cleans up the
  // element it replaces. ----
  var editedMessage = null;
  var originals = new WeakMap();

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button.edit") : null;
    var message = button && button.closest("article");
    if (message) editedMessage = message.cloneNode(true);
  }, true);

  function cancelEdit(editForm) {
    var original = originals.get(editForm);
    var link = editForm.querySelector("a.cancel");
    if (!original) {
      if (link) window.location.href = link.href;
      return;
    }
    editForm.replaceWith(original);
    htmx.process(original);
    var again = original.querySelector("button.edit");
    if (again) again.focus();
  }

  document.body.addEventListener("htmx:load", function (event) {
    var editForm = event.target;
    if (!editForm.matches || !editForm.matches("form.editing")) return;
    if (editedMessage) originals.set(editForm, editedMessage);
    editedMessage = null;
    var box = editForm.querySelector("textarea");
    box.focus();
    box.setSelectionRange(box.value.length, box.value.length);
    box.addEventListener("keydown", function (key) {
      if (key.key === "Enter" && !key.shiftKey && !key.isComposing) {
        key.preventDefault();
        if (box.value.trim() !== "") editForm.requestSubmit();
      } else if (key.key === "Escape") {
        key.preventDefault();
        key.stopPropagation();
        cancelEdit(editForm);
      }
    });
    var link = editForm.querySelector("a.cancel");
    if (link) {
      link.addEventListener("click", function (click) {
        click.preventDefault();
        cancelEdit(editForm);
      });
    }
  });

  // A saved edit (or a regenerate) replaces the transcript, and the element that had the
  // focus with it: the composer has the focus again.
  document.body.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail.target === messages) input.focus();
  });

  // ---- Settings: a drawer (a modal <dialog>) over the chat, opened from the header; Esc,
  // its close button or a click beside it closes it. ----
  var settingsDialog = document.getElementById("settings-dialog");

  document.getElementById("settings-open").addEventListener("click", function (event) {
    event.stopPropagation();
    showSidebar(false);
    settingsDialog.showModal();
  });

  document.getElementById("settings-close").addEventListener("click", function () {
    settingsDialog.close();
  });

  settingsDialog.addEventListener("click", function (event) {
    if (event.target !== settingsDialog) return;
    var box = settingsDialog.getBoundingClientRect();
    var inside = event.clientX >= box.left && event.clientX <= box.right &&
                 event.clientY >= box.top && event.clientY <= box.bottom;
    if (!inside) settingsDialog.close();
  });

  // ---- /clear deletes every message of the chat: it asks first, as deleting a
  // conversation in the sidebar does. ----
  document.body.addEventListener("htmx:confirm", function (event) {
    if (event.detail.elt !== form) return;
    if (!/^\/clear(\s|$)/.test(input.value.trim())) return;
    if (!document.getElementById("conversation-id").value) return;
    event.preventDefault();
    if (window.confirm("Delete every message of this chat? This cannot be undone.")) {
      event.detail.issueRequest(true);
    }
  });
})();
