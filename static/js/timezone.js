// Tells the server the browser's time zone in the `tz` cookie (read by TimezoneMiddleware), so
// visitors who are not signed in see local times; signed-in people see their account's zone.
// Also preselects the zone in pickers that ask for it (data-detect-time-zone) while they still
// show the default.
//
// The cookie holds the bare IANA name ("America/Los_Angeles"): such names use only letters,
// digits and "_", "-", "+", "/", all legal in a cookie value, so the server reads exactly what
// is written here. A name with anything else is not written at all.
const ZONE_NAME = /^[A-Za-z0-9_+-]+(\/[A-Za-z0-9_+-]+)*$/;
const COOKIE = "tz";
const RELOADED_KEY = "parley-tz-reloaded";

function cookieValue() {
  const prefix = `${COOKIE}=`;
  const entry = document.cookie.split("; ").find((part) => part.startsWith(prefix));
  return entry ? entry.slice(prefix.length) : null;
}

function cookieZone() {
  const value = cookieValue();
  if (value === null) return null;
  try {
    // Older versions of this script wrote the name percent-encoded.
    return decodeURIComponent(value);
  } catch {
    return null;
  }
}

// The browser's own spelling of a zone ("Etc/UTC" and "UTC" are one zone), or null for a name
// it does not know.
function canonical(name) {
  try {
    return new Intl.DateTimeFormat("en", { timeZone: name }).resolvedOptions().timeZone;
  } catch {
    return null;
  }
}

function reloadedFor(zone) {
  try {
    return window.sessionStorage.getItem(RELOADED_KEY) === zone;
  } catch {
    return false;
  }
}

function markReloaded(zone) {
  try {
    window.sessionStorage.setItem(RELOADED_KEY, zone);
  } catch {
    // Without storage the cookie check alone keeps this to one reload.
  }
}

const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;

if (zone && ZONE_NAME.test(zone)) {
  const toldBefore = cookieZone();
  if (cookieValue() !== zone) {
    const secure = window.location.protocol === "https:" ? "; secure" : "";
    document.cookie = `${COOKIE}=${zone}; path=/; max-age=31536000; samesite=lax${secure}`;
  }
  // base.html names the zone a page for a visitor (not signed in) was rendered in. On the
  // first visit, or after the browser's zone changed, that is not the browser's: render the
  // page again, once, now that the server knows. Only when the cookie really was written
  // (cookies may be off) and this zone was not told before, so a zone the server does not
  // accept costs one reload at most.
  const shown = document.documentElement.dataset.visitorTimeZone;
  const stale =
    shown !== undefined &&
    toldBefore !== zone &&
    cookieValue() === zone &&
    canonical(shown) !== canonical(zone) &&
    !reloadedFor(zone);
  if (stale) {
    markReloaded(zone);
    window.location.reload();
  } else {
    for (const select of document.querySelectorAll("select[data-detect-time-zone]")) {
      const known = Array.from(select.options).some((option) => option.value === zone);
      if (select.value === "UTC" && known) {
        select.value = zone;
      }
    }
  }
}
