"""What happened, as stored and shown: sessions, their logs, transcripts, actions and usage; events and refusals; schedule runs; the routines' and session rows' views."""
