"""Business services on top of head-end and MDM: the unit of work the API calls."""
