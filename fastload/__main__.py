from fastload.tools.cli import main

raise SystemExit(main())
