from vsmcp.node.app.daemon import main

raise SystemExit(main())
