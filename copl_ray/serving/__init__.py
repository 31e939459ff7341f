"""Serving: the Ray Serve application of CONTRACT section 4 (personalized scoring, onboarding,
survey, OpenRLHF's remote reward protocol), its plain logic, and clients for TRL and veRL."""
