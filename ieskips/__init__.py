"""ieskips: Implicit Euler skip connections (Li, He & Lin, ICML 2020) as a PyTorch research library.

Pure PyTorch: nothing here imports Ray or MLflow.
"""
__version__ = "0.1.0"
