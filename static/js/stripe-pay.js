// The Stripe card step: Stripe's Payment Element confirms the PaymentIntent (or saves the
// card with a SetupIntent), 3-D Secure included, then Stripe sends the browser to the
// return URL, where the server reads the result from Stripe itself.
const form = document.getElementById("stripe-pay");
if (form && window.Stripe) {
  const stripe = window.Stripe(form.dataset.publishableKey);
  const elements = stripe.elements({ clientSecret: form.dataset.clientSecret });
  elements.create("payment").mount("#payment-element");
  const errorBox = document.getElementById("payment-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button");
    button.disabled = true;
    const confirm = form.dataset.savesCard === "true" ? stripe.confirmSetup : stripe.confirmPayment;
    const { error } = await confirm.call(stripe, {
      elements,
      confirmParams: { return_url: form.dataset.returnUrl },
    });
    // Reached only when the confirmation failed before any redirect. This attempt's error
    // replaces the one the page was served with: the card's error is said once.
    document.getElementById("last-error")?.remove();
    errorBox.textContent = error.message || "The card could not be confirmed.";
    errorBox.hidden = false;
    button.disabled = false;
  });
}
