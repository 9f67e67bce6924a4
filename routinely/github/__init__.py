"""Talking to GitHub as the App: installation tokens and recovery of missed deliveries."""
