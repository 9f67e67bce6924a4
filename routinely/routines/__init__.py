"""The applied routines: the catalog and what a routine declares (agent, limits, schedules, services, prices, prompt), steering them (control, API tokens), and open triggers."""
