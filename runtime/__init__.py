"""The gateway process: signalling, aiortc media, the frame channel, the scheduler, config, CLI.

Importing this package imports nothing heavy; each module loads what it needs, so a worker
process can import ``runtime.channel`` without aiortc or Gradio.
"""
