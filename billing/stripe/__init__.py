"""Stripe: the gateway and the slim projections of Stripe objects."""
