from simulator.kubeapi.server import main

main()
