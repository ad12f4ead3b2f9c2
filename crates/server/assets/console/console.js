// The console's one script of its own (htmx aside): a form marked
// `data-once` is sent once, however often its button is pressed, so that a
// double click never sends "create" twice. Without scripts the console
// works the same; the server refuses a second tenant with the same slug.
document.addEventListener('submit', (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !('once' in form.dataset)) return;
  if (form.dataset.sent === 'yes') {
    event.preventDefault();
    return;
  }
  form.dataset.sent = 'yes';
  for (const button of form.querySelectorAll('button[type="submit"]')) {
    button.setAttribute('aria-disabled', 'true');
  }
});
