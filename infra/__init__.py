"""Deployment of the melanoma classifier: CloudFormation templates, deploy CLI, host setup."""
