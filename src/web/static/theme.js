// smolbot: applies the theme picked earlier (localStorage) before the page paints. Without
// a stored choice the page follows the system's light or dark setting.
(function () {
  "use strict";
  try {
    var theme = localStorage.getItem("smolbot-theme");
    if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
  } catch (e) {
    // Storage can be disabled; the system's setting applies.
  }
})();
