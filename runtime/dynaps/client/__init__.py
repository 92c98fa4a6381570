"""The training program's side: PS (the connection), Table, Handle and sampling."""
