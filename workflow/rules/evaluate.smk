# Average recall of the proposals (COCOeval's matching, useCats=0) and recall-vs-IoU curves.


rule evaluate:
    input:
        gt=split_json,
        proposals=result("{split}/proposals.h5"),
    output:
        ar=result("{split}/ar.json"),
        curve=result("{split}/recall_iou.csv"),
        plot=result("{split}/recall_iou.png"),
    log:
        log_file("evaluate_{split}"),
    benchmark:
        benchmark_file("evaluate_{split}")
    conda:
        "../../environment.yml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        max_dets=config["evaluate"]["max_dets"],
        matching=config["evaluate"]["matching"],
        first_n=first_n_option,
    shell:
        "ifcn evaluate --gt {input.gt} --proposals {input.proposals}"
        " --max-dets {params.max_dets} --matching {params.matching} {params.first_n}"
        " --workers {threads} --out {output.ar} > {log} 2>&1"
