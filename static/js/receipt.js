// The receipt's print button (inline handlers are refused by the Content-Security-Policy).
document.querySelector("[data-print]")?.addEventListener("click", () => window.print());
