"""Authorization: SMART Backend Services tokens (`tokens`), scopes (`scopes`), the access
decision every request consults (`access`), registered clients (`clients`); `setup` turns
the settings into the token service."""
