"""End-to-end tests: the product run as real processes against the Stripe sandbox and a real Redis."""
