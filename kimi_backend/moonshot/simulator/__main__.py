"""`python -m kimi_backend.moonshot.simulator --port 9100`: the simulator on gevent's server."""
from .servers import main

if __name__ == "__main__":
    main()
