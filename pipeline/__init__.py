"""TFX pipeline definition shared by the local and Kubeflow runners."""
