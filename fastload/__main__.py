from fastload.cli import main

raise SystemExit(main())
