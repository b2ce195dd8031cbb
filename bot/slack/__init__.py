"""The Slack app: Block Kit cards, commands, interactivity and events."""
