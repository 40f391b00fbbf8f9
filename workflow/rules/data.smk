# Datasets: everything downstream reads a COCO instances JSON and an image folder.


if DATA["dataset"] == "synthetic":

    rule synth:
        output:
            train=DATA["train_json"],
            val=DATA["val_json"],
        log:
            log_file("synth"),
        benchmark:
            benchmark_file("synth")
        conda:
            "../../environment.yml"
        threads: 2
        resources:
            mem_mb=2000,
            runtime=20,
        params:
            root=parent_of_output("train"),
            synth=DATA["synth"],
        shell:
            "ifcn data synth --out {params.root} --seed {params.synth[seed]}"
            " --num-train {params.synth[num_train]} --num-val {params.synth[num_val]}"
            " --min-side {params.synth[min_side]} --max-side {params.synth[max_side]}"
            " --min-objects {params.synth[min_objects]} --max-objects {params.synth[max_objects]}"
            " --workers {threads} > {log} 2>&1"
