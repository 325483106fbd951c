"""vmsilod: the daemon that owns every configured VM and answers the control socket."""
