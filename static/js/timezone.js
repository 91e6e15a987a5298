// Tells the server the browser's time zone (a cookie read by TimezoneMiddleware, so visitors
// who are not signed in see local times) and preselects it in pickers that ask for it
// (data-detect-time-zone) while they still show the default.
const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;

if (zone) {
  document.cookie = `tz=${encodeURIComponent(zone)}; path=/; max-age=31536000; samesite=lax`;
  for (const select of document.querySelectorAll("select[data-detect-time-zone]")) {
    const known = Array.from(select.options).some((option) => option.value === zone);
    if (select.value === "UTC" && known) {
      select.value = zone;
    }
  }
}
