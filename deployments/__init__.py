"""Ray Serve deployments: thin wrappers over ``stages``, the job manager, the HTTP ingress and the app builder."""
