// The playground: while a sample is queued or running, fetch its output fragment again every
// half second (growing to 5 s) and swap it in; stop once the fragment says it is done.
const output = document.getElementById("sample-output");

async function refresh(delay) {
  const url = output?.dataset.refresh;
  if (!url) return;
  try {
    const answer = await fetch(url, { headers: { Accept: "text/html" }, credentials: "same-origin" });
    if (answer.ok) {
      output.innerHTML = await answer.text();
      if (!output.querySelector("#sample-pending")) {
        delete output.dataset.refresh;
        return;
      }
    }
  } catch (error) {
    // offline for a moment: try again below
  }
  setTimeout(() => refresh(Math.min(delay * 1.5, 5000)), delay);
}

setTimeout(() => refresh(500), 500);

// The prompt-format hint's button: put the typed prompt between the renderer's prefix and suffix
// (once: a prompt already so wrapped is left as it is).
const apply = document.getElementById("apply-format");
apply?.addEventListener("click", () => {
  const prompt = document.getElementById("id_prompt");
  const { prefix, suffix } = apply.dataset;
  if (!prompt.value.startsWith(prefix) || !prompt.value.endsWith(suffix)) {
    prompt.value = prefix + prompt.value + suffix;
  }
  prompt.focus();
});
