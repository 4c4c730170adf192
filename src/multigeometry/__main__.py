from multigeometry.cli import main

raise SystemExit(main())
