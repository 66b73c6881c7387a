"""qwendeploy: plan, serve and diagnose Qwen models on NVIDIA GPUs with vLLM.

Importing the package does nothing but define the version, so ``qwendeploy --help`` stays fast.
"""

__version__ = "0.1.0"
