"""The browser studio: Gradio tabs over the pipelines layer, a gallery and a job registry."""
