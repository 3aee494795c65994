// Buttons with data-copy="<selector>" copy the text of that element; the result is announced.
const announce = (text) => {
  const region = document.querySelector(".copied");
  if (region) region.textContent = text;
};

for (const button of document.querySelectorAll("button[data-copy]")) {
  button.addEventListener("click", async () => {
    const source = document.querySelector(button.dataset.copy);
    if (!source) return;
    const text = source.textContent.trim();
    try {
      await navigator.clipboard.writeText(text);
      announce("Copied to the clipboard.");
    } catch {
      // no clipboard permission (e.g. plain HTTP): select the text so Ctrl+C copies it
      const range = document.createRange();
      range.selectNodeContents(source);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      announce("Selected: press Ctrl+C (or Cmd+C) to copy.");
    }
  });
}
