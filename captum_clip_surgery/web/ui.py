r"""The Gradio page of ``clip-surgery serve``: a thin layer over
:class:`~captum_clip_surgery.web.explorer.Explorer` (every computation, figure and file
is made there and tested without a browser).

Gradio is imported only when the page is built (``pip install
'captum-clip-surgery[app]'``), with its analytics switched off: the page makes no call
outside the machine it is served from.
"""

# no ``from __future__ import annotations``: Gradio reads the handlers' annotations
# (gr.SelectData, gr.Progress) as objects
import logging
import os
import tempfile
from typing import TYPE_CHECKING, Any, List, Optional, Tuple

from captum_clip_surgery.methods.registry import method_title
from captum_clip_surgery.web.explorer import Explorer, Scene, read_image, scene_gallery

if TYPE_CHECKING:
    import gradio as gr

__all__ = ["APP_HINT", "build_app", "import_gradio", "launch_app"]

#: How to install what the page needs.
APP_HINT = "pip install 'captum-clip-surgery[app]'"

logger = logging.getLogger(__name__)


def import_gradio() -> Any:
    r"""Gradio, with its analytics and version check off (set before it is imported).

    Raises:
        ImportError: when Gradio is not installed, naming the extra that installs it.
    """
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio
    except ImportError as exc:
        raise ImportError(f"gradio is not installed; install it with `{APP_HINT}`") from exc
    return gradio


def message_of(exc: BaseException) -> str:
    r"""The one line the page shows for an error: the message of a mistake in the
    inputs (``ValueError`` / ``TypeError``, which name the field), else the error's type
    and first line (the traceback goes to the server's log only)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, (ValueError, TypeError)):
        return first
    return f"internal error ({type(exc).__name__}): {first}; the server's log has the details"


def _scores_table(texts: List[str], scores: Any, seconds: dict) -> str:
    lines = ["| text | probability |", "|---|---:|"]
    lines += [f"| {t} | {float(s):.3f} |" for t, s in zip(texts, scores)]
    timing = ", ".join(f"{method_title(m)} {s:.2f} s" for m, s in seconds.items())
    return "\n".join(lines) + f"\n\nTime per method: {timing}."


def build_app(
    explorer: Explorer,
    scenes: int = 12,
    workdir: Optional[str] = None,
    title: str = "CLIP Surgery explorer",
) -> "gr.Blocks":
    r"""The page: an image (upload, or a held-out scene of the gallery), texts and
    methods; the maps per text side by side (with the downloads), a segmentation tab and
    a text → points tab.

    Args:
        explorer (Explorer): the model behind the page.
        scenes (int): held-out scenes in the gallery (the first is selected).
        workdir (str, optional): where the gallery and the downloads are written
            (default: a new temporary folder).
        title (str): the page's title.

    Returns:
        gradio.Blocks: the page (``.launch()`` it, or use :func:`launch_app`).
    """
    gr = import_gradio()
    workdir = workdir or tempfile.mkdtemp(prefix="clip-surgery-serve-")
    gallery_scenes: List[Scene] = scene_gallery(os.path.join(workdir, "scenes"), scenes)
    first = gallery_scenes[0]
    outputs_root = os.path.join(workdir, "outputs")
    os.makedirs(outputs_root, exist_ok=True)

    def fail(exc: BaseException) -> str:
        if not isinstance(exc, (ValueError, TypeError)):
            logger.exception("clip-surgery serve: request failed")
        message = message_of(exc)
        gr.Warning(message)
        return message

    def on_upload(path: Optional[str]) -> Tuple[Any, Any, str]:
        if not path:
            return gr.update(), gr.update(), ""
        try:
            read_image(path)
        except Exception as exc:
            return path, None, fail(exc)
        return path, path, ""

    def on_pick(evt: gr.SelectData) -> Tuple[str, str, str, Any, str]:
        scene = gallery_scenes[int(evt.index)]
        return scene.path, scene.path, ", ".join(scene.texts), None, ""

    def on_explain(path: str, texts: str, methods: List[str],
                   progress: gr.Progress = gr.Progress()) -> Tuple[Any, Any, Any, str]:  # noqa: B008 (Gradio's form)
        try:
            result = explorer.explain(path, texts, methods, progress=progress)
            files = result.save(tempfile.mkdtemp(dir=outputs_root))
        except Exception as exc:
            return None, "", None, fail(exc)
        return files[-1], _scores_table(result.texts, result.scores, result.seconds), files, ""

    def on_segment(path: str, texts: str, method: str, pamr: bool, sliding: bool,
                   progress: gr.Progress = gr.Progress()) -> Tuple[Any, str]:  # noqa: B008 (Gradio's form)
        try:
            result = explorer.segment(path, texts, method, pamr=pamr, sliding_window=sliding,
                                      progress=progress)
            out = os.path.join(tempfile.mkdtemp(dir=outputs_root), "segmentation.png")
            result.figure().savefig(out, dpi=110)
        except Exception as exc:
            return None, fail(exc)
        return out, ""

    def on_points(path: str, texts: str, method: str,
                  progress: gr.Progress = gr.Progress()) -> Tuple[Any, str]:  # noqa: B008 (Gradio's form)
        try:
            result = explorer.points(path, texts, method, progress=progress)
            out = os.path.join(tempfile.mkdtemp(dir=outputs_root), "points.png")
            result.figure().savefig(out, dpi=110)
        except Exception as exc:
            return None, fail(exc)
        return out, ""

    method_choices = [(method_title(m), m) for m in explorer.methods]
    token_choices = [(method_title(m), m) for m in explorer.token_methods]
    sam = ("SAM masks: on (Segment Anything checkpoint given)." if explorer.sam_predictor
           else "SAM masks: off (start with `--sam-checkpoint PATH` and "
                "`pip install 'captum-clip-surgery[sam]'` to add them).")

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        current = gr.State(first.path)
        gr.Markdown(f"# {title}\nModel: **{explorer.name}**. Pick a held-out scene or upload "
                    "an image, type texts, choose methods, then **Explain**.")
        with gr.Row():
            with gr.Column(scale=3):
                gallery = gr.Gallery(
                    value=[(s.path, s.caption) for s in gallery_scenes],
                    label="Held-out scenes (click one)", columns=6, height=220,
                    allow_preview=False, elem_id="scenes",
                )
                upload = gr.File(label="...or upload an image", file_types=["image"],
                                 type="filepath", elem_id="upload", height=130)
            with gr.Column(scale=2):
                preview = gr.Image(value=first.path, type="filepath", label="Image explained",
                                   interactive=False, height=260, elem_id="preview")
        texts = gr.Textbox(value=", ".join(first.texts), label="Texts",
                           info="comma-separated, or one per line", lines=1, elem_id="texts")
        message = gr.Textbox(label="Message", interactive=False, elem_id="message",
                             placeholder="(no problem so far)")
        with gr.Tabs():
            with gr.Tab("Maps", elem_id="tab-maps"):
                methods = gr.CheckboxGroup(choices=method_choices,
                                           value=explorer.default_methods, label="Methods",
                                           elem_id="methods")
                explain = gr.Button("Explain", variant="primary", elem_id="explain")
                figure = gr.Image(label="Maps per text (p: the model's probability of the text)",
                                  show_label=False, type="filepath", interactive=False,
                                  elem_id="maps")
                scores = gr.Markdown(elem_id="scores")
                downloads = gr.File(label="Downloads: maps (.npy, float32 [T, H, W], as "
                                          "clip-surgery explain --save-maps) and figure (.png)",
                                    file_count="multiple", interactive=False,
                                    elem_id="downloads")
            with gr.Tab("Segmentation", elem_id="tab-segmentation"):
                seg_method = gr.Dropdown(choices=token_choices,
                                         value=token_choices[0][1] if token_choices else None,
                                         label="Method (token maps)", elem_id="seg-method")
                with gr.Row():
                    pamr = gr.Checkbox(label="PAMR refinement", value=False, elem_id="pamr")
                    sliding = gr.Checkbox(label="Sliding window (1.5x input, half stride)",
                                          value=False, elem_id="sliding")
                seg_run = gr.Button("Segment", variant="primary", elem_id="segment")
                seg_figure = gr.Image(label="Labels", show_label=False, type="filepath",
                                      interactive=False, elem_id="seg-figure")
            with gr.Tab("Text → points", elem_id="tab-points"):
                gr.Markdown("Point prompts for Segment Anything from each text's map: "
                            "positive (green) and negative (red) points; 'a+b' combines "
                            f"two texts. {sam}")
                pts_method = gr.Dropdown(choices=token_choices,
                                         value=token_choices[0][1] if token_choices else None,
                                         label="Method (token maps)", elem_id="points-method")
                pts_run = gr.Button("Points", variant="primary", elem_id="points")
                pts_figure = gr.Image(label="Points", show_label=False, type="filepath",
                                      interactive=False, elem_id="points-figure")

        upload.change(on_upload, inputs=upload, outputs=[current, preview, message])
        gallery.select(on_pick, outputs=[current, preview, texts, upload, message])
        explain.click(on_explain, inputs=[current, texts, methods],
                      outputs=[figure, scores, downloads, message])
        seg_run.click(on_segment, inputs=[current, texts, seg_method, pamr, sliding],
                      outputs=[seg_figure, message])
        pts_run.click(on_points, inputs=[current, texts, pts_method],
                      outputs=[pts_figure, message])
    demo._clip_surgery_workdir = workdir  # type: ignore[attr-defined]
    return demo


def launch_app(
    explorer: Explorer,
    host: str = "127.0.0.1",
    port: Optional[int] = None,
    share: bool = False,
    scenes: int = 12,
    block: bool = True,
    quiet: bool = False,
) -> Tuple["gr.Blocks", str]:
    r"""Build the page and serve it.

    Args:
        explorer (Explorer): the model behind the page.
        host (str): the address to bind (default loopback only).
        port (int, optional): the port (default: Gradio's, 7860, or the next free one).
        share (bool): also ask Gradio for a public link (needs the internet).
        scenes (int): held-out scenes in the gallery.
        block (bool): serve until interrupted; ``False`` returns at once (the server
            runs in a thread: ``demo.close()`` stops it).
        quiet (bool): print nothing.

    Returns:
        tuple: ``(demo, local URL)``.
    """
    demo = build_app(explorer, scenes)
    demo.queue(default_concurrency_limit=1)
    workdir = demo._clip_surgery_workdir  # type: ignore[attr-defined]
    _, url, _ = demo.launch(
        server_name=host, server_port=port, share=share, inbrowser=False,
        prevent_thread_lock=True, show_error=False, quiet=quiet, allowed_paths=[workdir],
        ssr_mode=False, mcp_server=False, pwa=False, enable_monitoring=False,
    )
    if block:
        try:
            demo.block_thread()
        finally:
            demo.close()
    return demo, url
